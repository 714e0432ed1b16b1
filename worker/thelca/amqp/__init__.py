"""AMQP plumbing: the only package of the worker side that imports pika.

`consumer` runs the long-lived consumers (worker, logger) on a SelectConnection
with pipelined publisher confirms; `admin` holds short-lived operations on a
BlockingConnection (health, dead letters).
"""

from thelca.amqp.admin import queue_consumers
from thelca.amqp.consumer import BatchConsumer, Topology, safe_url, thelca_topology

__all__ = ["BatchConsumer", "Topology", "queue_consumers", "safe_url", "thelca_topology"]
