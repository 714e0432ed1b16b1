"""The one place that wires thelca together from Settings."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from thelca.amqp import (
    BatchConsumer,
    ReplayConsumer,
    connection_parameters,
    logger_topology,
    replay_topology,
    safe_url,
    thelca_topology,
)
from thelca.audit.checkpoints import (
    CheckpointWriter,
    checkpoints_path,
    key_id,
    load_signing_key,
)
from thelca.authority.base import Authority
from thelca.errors import ConfigurationError
from thelca.eventlog.writer import EventLogWriter
from thelca.roles.commands import CommandRole
from thelca.roles.logwriter import LINGER, LogWriterRole
from thelca.settings import OPTIONS, Settings
from thelca.stores import ItemStore, many_writers, open_store
from thelca_client.tls import TlsFileError, TlsFiles

log = logging.getLogger("thelca")

AUTHORITIES = ("jwt", "test-only")
TLS_OPTIONS = {"ca_file": "amqp_ca_file", "cert_file": "amqp_cert_file",
               "key_file": "amqp_key_file", "url": "amqp_url"}


def check_authority_choice(settings: Settings) -> str:
    """The chosen Authority's name; refuse a missing, unknown or misconfigured one.

    For jwt this also reads its key files, so that `thelca run` refuses to start
    rather than restart a worker that cannot start; a key set URL is not fetched.
    """
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
    if name == "jwt":
        from thelca.authority import jwt

        jwt.from_settings(settings)
    return name


def build_authority(settings: Settings) -> Authority:
    """The Authority named by the settings; there is deliberately no default."""
    env = OPTIONS["authority"].env
    if settings.authority == "jwt":
        return _jwt_authority(settings)  # checks its settings itself
    name = check_authority_choice(settings)
    if name == "test-only":
        from thelca.authority.test_only import TestOnlyAuthority

        log.warning("%s=test-only: any token but BAAD is accepted and user ids contain the "
                    "token. For development and tests only, never in production.", env)
        return TestOnlyAuthority()
    raise AssertionError(f"{name} is listed in AUTHORITIES but not built")


def authority_health(settings: Settings) -> tuple[bool, str]:
    """Whether the Authority can verify tokens now, and a line that says so (for `health`).

    For jwt this reads the key set as the worker does (a URL is fetched): an
    emptied or removed JWKS file is a failure, since the worker refuses every
    token then. Without THELCA_AUTHORITY set there is nothing to check.
    """
    if not settings.authority:
        return True, f"not checked ({OPTIONS['authority'].env} is not set here)"
    try:
        name = check_authority_choice(settings)
        if name != "jwt":
            return True, f"{name} (development only)"
        from thelca.authority import jwt

        keys = jwt.from_settings(settings).keys
        failure = keys.failure()
    except ConfigurationError as error:
        return False, f"FAILED ({error})"
    if failure is not None:
        return False, f"FAILED ({failure})"
    return True, f"ok (jwt, keys from {keys.description})"


def check_processes(settings: Settings) -> None:
    """Refuse several worker processes on a store that takes one writer, saying what to do."""
    if settings.processes == 1 or many_writers(settings.store):
        return
    option = OPTIONS["processes"]
    kind = "SQLite is one writer" if settings.store.startswith("sqlite:") else \
        "a memory: store lives inside one process"
    raise ConfigurationError(
        f"{option.flag} / {option.env} is {settings.processes}, but {kind}: run one worker "
        f"process ({option.flag} 1), or use a PostgreSQL store (THELCA_STORE=postgresql://...) "
        "for many"
    )


def worker_children(settings: Settings) -> dict[str, list[str]]:
    """The `thelca worker` children a supervisor runs for settings.processes."""
    if settings.processes == 1:
        return {"worker": ["worker"]}
    return {f"worker-{n}": ["worker"] for n in range(1, settings.processes + 1)}


def child_environment(settings: Settings, environ: dict[str, str]) -> dict[str, str]:
    """The environment of a supervised child: these settings, one worker process each."""
    return {**environ, **settings.environment(), OPTIONS["processes"].env: "1"}


def _jwt_authority(settings: Settings) -> Authority:
    from thelca.authority import jwt

    authority = jwt.from_settings(settings)
    unchecked = {"iss": authority.rules.issuer, "aud": authority.rules.audience}
    for claim, option in (("iss", "jwt_issuer"), ("aud", "jwt_audience")):
        if unchecked[claim] is None:
            log.warning("jwt: %s is unset, so a token's %s is not checked: any token that your "
                        "keys signed is accepted whatever its %s. Set it in production.",
                        OPTIONS[option].env, claim, claim)
    log.info("jwt: keys from %s; algorithms %s; leeway %ds", authority.keys.description,
             ",".join(authority.rules.algorithms), authority.rules.leeway)
    authority.keys.warm_up()
    return authority


def tls_files(settings: Settings) -> TlsFiles | None:
    """The amqps:// files of the settings, each loaded once now; None when none is given.

    A file that cannot be loaded, or TLS files with an amqp:// URL, is refused
    here with the variable's name, rather than at every reconnection.
    """
    files = TlsFiles(settings.amqp_ca_file, settings.amqp_cert_file, settings.amqp_key_file)
    try:
        connection_parameters(settings.amqp_url, tls=files)
    except TlsFileError as error:
        option = OPTIONS[TLS_OPTIONS[error.field]]
        raise ConfigurationError(f"{option.env} ({option.flag}): {error}") from None
    except ValueError as error:  # pika's verdict on a URL it cannot parse
        option = OPTIONS["amqp_url"]
        raise ConfigurationError(f"{option.env}: {error}") from None
    return files if files.given else None


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
    tls = tls_files(settings)  # before the store, whose lock a refusal here would keep
    store = store or open_store(settings.store)
    names = settings.names
    handler = CommandRole(store, authority, names, max_body=settings.max_body,
                          dedup_window=settings.dedup_window)
    log.info("worker: prefix %s, store %s, authority %s, prefetch %d, dedup window %d s",
             settings.prefix, safe_url(store.url), authority.name, settings.prefetch,
             settings.dedup_window)
    consumer = BatchConsumer(
        settings.amqp_url, names.commands, handler, thelca_topology(names),
        prefetch=settings.prefetch, max_batch=settings.prefetch, name="worker",
        on_state=_state_logger("worker"), tls=tls,
    )
    return Role(consumer, store.close)


def build_logger(settings: Settings) -> Role:
    names = settings.names
    tls = tls_files(settings)
    signed = _signed_checkpoints(settings)  # before the files: a bad key opens nothing
    writer = EventLogWriter(settings.event_log, max_bytes=settings.event_log_max_bytes)
    checkpoints = signed(checkpoints_path(writer.path))
    role = LogWriterRole(writer, names, publishers=settings.publishers, checkpoints=checkpoints)
    rotation = (f"segments of {settings.event_log_max_bytes} bytes"
                if settings.event_log_max_bytes else "no rotation")
    publishers = ("any broker user's" if settings.publishers is None
                  else "those of " + ", ".join(sorted(settings.publishers)))
    log.info("logger: prefix %s, event log %s (%d recent lines read; %s; the chain at line "
             "%d); writes events that came through %s, %s; checkpoints to %s",
             settings.prefix, writer.path, writer.lines_at_start, rotation, writer.chain.lines,
             names.events, publishers, checkpoints.path)
    consumer = BatchConsumer(
        settings.amqp_url, names.events_log, role, logger_topology(names),
        prefetch=settings.prefetch, max_batch=settings.prefetch, name="logger",
        on_state=_state_logger("logger"), tls=tls, tick=role.tick, linger=LINGER,
    )
    return Role(consumer, role.close)


def _signed_checkpoints(settings: Settings) -> Callable[[Path], CheckpointWriter]:
    """How to open the checkpoints, signed with the settings' key (loaded now), or unsigned
    with a warning."""
    option = OPTIONS["log_signing_key"]
    if not settings.log_signing_key:
        log.warning("logger: %s is unset, so the event log's checkpoints are unsigned: an "
                    "auditor cannot tell them from checkpoints rewritten along with the log. "
                    "Set it in production (`thelca dev-keys` writes a development key).",
                    option.env)
        return CheckpointWriter
    key = load_signing_key(settings.log_signing_key)
    log.info("logger: checkpoints signed with key %s", key_id(key.public_key()))
    return lambda path: CheckpointWriter(path, key)


def build_replay(settings: Settings, *, authority: Authority | None = None) -> Role:
    """The replay consumer: serves <prefix>.replay from the event log and its segments."""
    from thelca.roles.replay import ReplayRole

    authority = authority or build_authority(settings)
    names = settings.names
    log.info("replay: prefix %s, event log %s, authority %s, %d streams at once",
             settings.prefix, settings.event_log, authority.name, settings.replay_streams)
    consumer = ReplayConsumer(
        settings.amqp_url, names.replay, ReplayRole(settings.event_log, authority, names),
        replay_topology(names), streams=settings.replay_streams, name="replay",
        on_state=_state_logger("replay"), tls=tls_files(settings),
    )
    return Role(consumer, lambda: None)


def _state_logger(role: str) -> Callable[[str], None]:
    def report(state: str) -> None:
        log.info("%s: %s", role, state)

    return report
