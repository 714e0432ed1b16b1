"""AMQP plumbing: the only package of the worker side that imports pika.

The long-lived consumers run on a SelectConnection with pipelined publisher
confirms: `topology` says what to declare, `connection` where to connect and
the reconnect loop, `session` one connection's life (confirms, drain on stop),
`batch` the batch consumer (worker, logger), with its publish channel in
`publishing`, its outbox rounds in `republish` and its stuck marker in
`marker`, and `streams` the replay consumer's streams (which requests are
streamed and which wait: `fairness`); `convert` turns pika's messages into the
roles' and back; `replies` is the second connection that replies and replay
streams go out on (what flows on it: `reply_flow`). Short-lived operator tools
use a BlockingConnection: `admin` (health) and `dead` (dead letters: listing
and retrying them; what each letter is and who sent it in `letters`). Callers
see thelca's errors, never pika's.

Importing this package contains pika's decoder (`decoding`) for the whole
process, so that no consumer (worker, logger, replay, the dead-letter tools)
loses its connection over a header it cannot decode.
"""

from thelca.amqp import decoding
from thelca.amqp.admin import QueueState, queue_consumers, queue_states
from thelca.amqp.batch import BatchConsumer
from thelca.amqp.connection import connection_parameters, safe_url
from thelca.amqp.dead import DeadLettersUnavailable, DeadQueue, Retried, list_dead, retry_dead
from thelca.amqp.letters import DeadLetter, Death, Sender
from thelca.amqp.streams import ReplayConsumer
from thelca.amqp.topology import Topology, logger_topology, replay_topology, thelca_topology
from thelca.errors import QueueMissing

decoding.install()  # at import, so before any connection of this process reads a frame

__all__ = [
    "BatchConsumer",
    "DeadLetter",
    "DeadLettersUnavailable",
    "DeadQueue",
    "Death",
    "QueueMissing",
    "QueueState",
    "ReplayConsumer",
    "Retried",
    "Sender",
    "Topology",
    "connection_parameters",
    "list_dead",
    "logger_topology",
    "queue_consumers",
    "queue_states",
    "replay_topology",
    "retry_dead",
    "safe_url",
    "thelca_topology",
]
