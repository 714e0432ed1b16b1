"""AMQP plumbing: the only package of the worker side that imports pika.

`consumer` runs the long-lived consumers (worker, logger) on a SelectConnection
with pipelined publisher confirms, and `replay` the replay consumer's streams
on one; short-lived operator tools use a BlockingConnection: `admin` (health)
and `dead` (dead letters).
"""

from thelca.amqp.admin import queue_consumers
from thelca.amqp.consumer import (
    BatchConsumer,
    Topology,
    connection_parameters,
    logger_topology,
    replay_topology,
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
from thelca.amqp.streams import ReplayConsumer

__all__ = [
    "BatchConsumer",
    "DeadLetter",
    "DeadLettersUnavailable",
    "DeadQueue",
    "Death",
    "ReplayConsumer",
    "Retried",
    "Topology",
    "connection_parameters",
    "list_dead",
    "logger_topology",
    "queue_consumers",
    "replay_topology",
    "retry_dead",
    "safe_url",
    "thelca_topology",
]
