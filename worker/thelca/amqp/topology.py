"""The broker objects thelca declares, and the steps that declare them.

The arguments of every queue live here and nowhere else: declaring the same
thing twice is harmless, declaring it with other arguments is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pika.channel

from thelca_client.contract import Names

QUORUM = {"x-queue-type": "quorum"}
# Redeliveries before a quorum queue dead-letters a message. Every queue sets its
# own explicitly: RabbitMQ 4 gives quorum queues a default of 20 (dead-lettering,
# or dropping where there is no dead-letter exchange), and on 3.10 -1 does not
# mean "unlimited" but drops a message at its first return.
DELIVERY_LIMIT = 20  # a command that keeps killing the worker
LOG_DELIVERY_LIMIT = 1000  # a restart of the logger returns every prefetched event
DEAD_DELIVERY_LIMIT = 1_000_000  # listing dead letters returns them; never drop one


# Refusals while declaring that no retry can cure, and what the operator can do.
SETUP_REFUSALS = {
    403: "This broker user lacks permissions on them (the README's \"Broker users\" section "
         "lists what each role needs).",
    406: "An earlier deployment declared one with other arguments: drain and delete it, "
         "or use another prefix.",
}


@dataclass(frozen=True)
class Queue:
    """A durable queue to declare: its arguments, and the fanout exchange it is bound to."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    bind_to: str | None = None


@dataclass(frozen=True)
class Topology:
    """What one consumer declares at start: fanout exchanges, then queues and their bindings."""

    fanout_exchanges: tuple[str, ...]
    queues: tuple[Queue, ...]



def thelca_topology(names: Names) -> Topology:
    """Every broker object of the contract, which the worker declares at start.

    The logger and the replay consumer declare only their part (logger_topology,
    replay_topology), so that their broker users need no access to what may hold
    tokens.

    Declaring the same thing twice is harmless; declaring it with other arguments
    is refused by the broker, so the arguments live here and nowhere else.
    """
    dead_letter = {
        "x-dead-letter-exchange": names.dead,
        "x-dead-letter-strategy": "at-least-once",  # needs x-overflow: reject-publish
        "x-overflow": "reject-publish",
    }
    return Topology(
        fanout_exchanges=(names.events, names.dead, names.checkpoints),
        queues=(
            Queue(names.commands, {**QUORUM, **dead_letter, "x-delivery-limit": DELIVERY_LIMIT}),
            Queue(names.events_log,
                  {**QUORUM, **dead_letter, "x-delivery-limit": LOG_DELIVERY_LIMIT},
                  bind_to=names.events),
            Queue(names.dead, {**QUORUM, "x-delivery-limit": DEAD_DELIVERY_LIMIT},
                  bind_to=names.dead),
            Queue(names.replay, {**QUORUM, **dead_letter, "x-delivery-limit": DELIVERY_LIMIT}),
        ),
    )


def logger_topology(names: Names) -> Topology:
    """What the logger uses: the events exchange, its queue and their binding, and the
    checkpoints exchange it publishes the log's checkpoints to (for witnesses).

    Not the commands queue nor the dead letters, both of which may hold tokens,
    so that the logger's broker user needs no permission on them (README,
    "Broker users"). The worker declares the whole topology, the dead-letter
    exchange that the logger publishes to included.
    """
    whole = thelca_topology(names)
    return Topology((names.events, names.checkpoints),
                    tuple(q for q in whole.queues if q.name == names.events_log))


def replay_topology(names: Names) -> Topology:
    """What the replay consumer uses: its own queue, and nothing that may hold tokens."""
    whole = thelca_topology(names)
    return Topology((), tuple(q for q in whole.queues if q.name == names.replay))


def stuck_marker(queue: str) -> str:
    """The queue a consumer of `queue` holds while a batch keeps failing: `thelca health`
    looks for it. Exclusive, so it goes with the consumer's connection; it holds nothing."""
    return f"{queue}.stuck"


def declare_steps(
    channel: pika.channel.Channel, topology: Topology, prefetch: int
) -> list[Callable[..., Any]]:
    """The broker calls that declare the whole topology and set the prefetch."""
    steps: list[Callable[..., Any]] = []
    for exchange in topology.fanout_exchanges:
        steps.append(partial(channel.exchange_declare, exchange, exchange_type="fanout",
                             durable=True))
    for queue in topology.queues:
        steps.append(partial(channel.queue_declare, queue.name, durable=True,
                             arguments=queue.arguments))
        if queue.bind_to:
            steps.append(partial(channel.queue_bind, queue.name, queue.bind_to,
                                 routing_key=""))
    steps.append(partial(channel.basic_qos, prefetch_count=prefetch))
    return steps


def run_steps(steps: list[Callable[..., Any]], done: Callable[[], None]) -> None:
    """Run broker calls one after another, each started by the previous one's reply."""
    if not steps:
        done()
        return
    first, rest = steps[0], steps[1:]
    first(callback=lambda _frame: run_steps(rest, done))

