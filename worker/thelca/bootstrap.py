"""The one place that wires thelca together from Settings."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from thelca.amqp import BatchConsumer, ReplayConsumer, safe_url, thelca_topology
from thelca.authority.base import Authority
from thelca.commands import CommandHandler
from thelca.errors import ConfigurationError
from thelca.eventlog import EventLogWriter
from thelca.logger import EventLogger
from thelca.settings import OPTIONS, Settings
from thelca.stores import ItemStore, open_store

log = logging.getLogger("thelca")

AUTHORITIES = ("test-only",)


def check_authority_choice(settings: Settings) -> str:
    """The chosen Authority's name; refuse a missing or unknown one, naming the variable."""
    name = settings.authority
    env = OPTIONS["authority"].env
    if not name:
        raise ConfigurationError(
            f"no Authority chosen: set {env} (or --authority) to one of "
            f"{', '.join(AUTHORITIES)}. test-only accepts any token but BAAD and is for "
            "development only."
        )
    if name not in AUTHORITIES:
        raise ConfigurationError(f"{env}={name!r} is not an Authority: use one of "
                                 f"{', '.join(AUTHORITIES)}")
    return name


def build_authority(settings: Settings) -> Authority:
    """The Authority named by the settings; there is deliberately no default."""
    name = check_authority_choice(settings)
    env = OPTIONS["authority"].env
    if name == "test-only":
        from thelca.authority.test_only import TestOnlyAuthority

        log.warning("%s=test-only: any token but BAAD is accepted and user ids contain the "
                    "token. For development and tests only, never in production.", env)
        return TestOnlyAuthority()
    raise AssertionError(f"{name} is listed in AUTHORITIES but not built")


@dataclass
class Role:
    """A consumer and what it holds open: run() returns once stopped, everything closed."""

    consumer: BatchConsumer | ReplayConsumer
    close: Callable[[], None]

    def run(self) -> None:
        try:
            self.consumer.run()
        finally:
            self.close()

    def stop(self) -> None:
        self.consumer.stop()


def build_worker(
    settings: Settings,
    *,
    store: ItemStore | None = None,
    authority: Authority | None = None,
) -> Role:
    authority = authority or build_authority(settings)
    store = store or open_store(settings.store)
    names = settings.names
    handler = CommandHandler(store, authority, names, max_body=settings.max_body)
    log.info("worker: prefix %s, store %s, authority %s, prefetch %d",
             settings.prefix, safe_url(store.url), authority.name, settings.prefetch)
    consumer = BatchConsumer(
        settings.amqp_url, names.commands, handler, thelca_topology(names),
        prefetch=settings.prefetch, max_batch=settings.prefetch, name="worker",
        on_state=_state_logger("worker"),
    )
    return Role(consumer, store.close)


def build_logger(settings: Settings) -> Role:
    names = settings.names
    writer = EventLogWriter(settings.event_log, max_bytes=settings.event_log_max_bytes)
    rotation = (f"segments of {settings.event_log_max_bytes} bytes"
                if settings.event_log_max_bytes else "no rotation")
    log.info("logger: prefix %s, event log %s (%d recent lines read; %s)",
             settings.prefix, writer.path, writer.lines_at_start, rotation)
    consumer = BatchConsumer(
        settings.amqp_url, names.events_log, EventLogger(writer, names), thelca_topology(names),
        prefetch=settings.prefetch, max_batch=settings.prefetch, name="logger",
        on_state=_state_logger("logger"),
    )
    return Role(consumer, writer.close)


def build_replay(settings: Settings, *, authority: Authority | None = None) -> Role:
    """The replay consumer: serves <prefix>.replay from the event log and its segments."""
    from thelca.replay import ReplayService

    authority = authority or build_authority(settings)
    names = settings.names
    log.info("replay: prefix %s, event log %s, authority %s, %d streams at once",
             settings.prefix, settings.event_log, authority.name, settings.replay_streams)
    consumer = ReplayConsumer(
        settings.amqp_url, names.replay, ReplayService(settings.event_log, authority),
        thelca_topology(names), streams=settings.replay_streams, name="replay",
        on_state=_state_logger("replay"),
    )
    return Role(consumer, lambda: None)


def _state_logger(role: str) -> Callable[[str], None]:
    def report(state: str) -> None:
        log.info("%s: %s", role, state)

    return report
