"""`thelca health`: whether the broker, the roles, the store and the Authority answer."""

from __future__ import annotations

import argparse
import time

from thelca.cli.common import EXIT_UNAVAILABLE
from thelca.errors import QueueMissing, ThelcaError
from thelca.settings import Settings
from thelca.stores import ItemStore

STUCK = ("a batch keeps failing and a consumer has stopped taking more until it goes "
         "through; its log says why, under 'stuck batch'")


def health(args: argparse.Namespace, settings: Settings) -> int:
    """0 only when the broker answers, a worker consumes the commands, the store answers and
    the Authority can verify tokens."""
    from thelca.amqp import queue_states
    from thelca.bootstrap import authority_health, tls_files
    from thelca.stores import open_store

    if args.role != "worker":
        return _role_health(args.role, settings)
    names = settings.names
    healthy = True
    tls = tls_files(settings)
    try:
        states = queue_states(settings.amqp_url, [names.commands, names.events_log], tls=tls)
        workers, loggers = states[names.commands], states[names.events_log]
        print("broker: ok")
        if workers.stuck:
            healthy = False
            print(f"worker: FAILED (stuck batch: {STUCK})")
        elif workers.consumers:
            print(f"worker: ok ({workers.consumers} consuming {names.commands})")
        else:
            healthy = False
            print(f"worker: FAILED (nothing consumes {names.commands})")
        if loggers.stuck:
            print(f"logger: stuck batch ({STUCK}); events wait in the queue")
        else:
            waiting = "ok" if loggers.consumers else "not running; events wait in the queue"
            print(f"logger: {waiting} ({loggers.consumers} consuming {names.events_log})")
    except ThelcaError as error:  # the AMQP room says BrokerUnavailable or QueueMissing
        healthy = False
        print(_broker_failure(error, "worker", names.commands))
    try:
        store = open_store(settings.store, writer=False)
        try:
            store.ping()
            print("store: ok")
            print(dedup_line(store, settings.dedup_window))
        finally:
            store.close()
    except Exception as error:
        healthy = False
        print(f"store: FAILED ({type(error).__name__}: {error})")
    verifies, line = authority_health(settings)
    print(f"authority: {line}")
    healthy = healthy and verifies
    return 0 if healthy else EXIT_UNAVAILABLE


def _broker_failure(error: ThelcaError, role: str, queue: str) -> str:
    """What health says when asking the broker failed: its fault, or a queue never declared."""
    if isinstance(error, QueueMissing):  # the broker answered: nothing declared the queue
        return f"broker: ok\n{role}: FAILED (no worker has declared {queue})"
    return f"broker: FAILED ({type(error).__name__}: {error})"


def _role_health(role: str, settings: Settings) -> int:
    """A logger's or replay consumer's health: the broker, and that role on its queue (and
    the replay consumer's Authority)."""
    from thelca.amqp import queue_states
    from thelca.bootstrap import authority_health, tls_files

    names = settings.names
    queue = names.events_log if role == "logger" else names.replay
    tls = tls_files(settings)
    try:
        state = queue_states(settings.amqp_url, [queue], tls=tls)[queue]
        consumers, stuck_batch = state.consumers, role == "logger" and state.stuck
    except ThelcaError as error:  # the AMQP room says BrokerUnavailable or QueueMissing
        print(_broker_failure(error, role, queue))
        return EXIT_UNAVAILABLE
    print("broker: ok")
    healthy = bool(consumers) and not stuck_batch
    if stuck_batch:
        print(f"{role}: FAILED (stuck batch: {STUCK})")
    elif not consumers:
        print(f"{role}: FAILED (nothing consumes {queue})")
    else:
        print(f"{role}: ok ({consumers} consuming {queue})")
    if role == "replay":  # it verifies the subscribers' tokens with the same Authority
        verifies, line = authority_health(settings)
        print(f"authority: {line}")
        healthy = healthy and verifies
    return 0 if healthy else EXIT_UNAVAILABLE


def dedup_line(store: ItemStore, window: int) -> str:
    """The deduplication window, and how old the oldest processed-command record is: about
    the window once the worker prunes (older while no command comes to prune them)."""
    line = f"dedup window: {window} s ({_duration(window)})"
    try:
        oldest = store.oldest_processed()
    except ThelcaError as error:  # a database no worker of this release has opened yet
        return f"{line}; the oldest record's age is unknown ({error})"
    if oldest is None:
        return f"{line}; no processed-command record is kept"
    return f"{line}; the oldest processed-command record is {_duration(time.time() - oldest)} old"


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{max(seconds, 0):.1f} s"
