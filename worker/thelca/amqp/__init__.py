"""AMQP plumbing: the only package of the worker side that imports pika.

`consumer` runs the long-lived consumers (worker, logger) on a SelectConnection
with pipelined publisher confirms; short-lived operator tools use a
BlockingConnection: `admin` (health) and `dead` (dead letters).
"""

from thelca.amqp.admin import queue_consumers
from thelca.amqp.consumer import (
    BatchConsumer,
    Topology,
    connection_parameters,
    logger_topology,
    safe_url,
    thelca_topology,
)
from thelca.amqp.dead import (
    DeadLetter,
    DeadLettersUnavailable,
    DeadQueue,
    Death,
    Retried,
    list_dead,
    retry_dead,
)

__all__ = [
    "BatchConsumer",
    "DeadLetter",
    "DeadLettersUnavailable",
    "DeadQueue",
    "Death",
    "Retried",
    "Topology",
    "connection_parameters",
    "list_dead",
    "logger_topology",
    "queue_consumers",
    "retry_dead",
    "safe_url",
    "thelca_topology",
]
