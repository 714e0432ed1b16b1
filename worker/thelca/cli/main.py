"""The `thelca` command: a thin layer over bootstrap and the client."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from thelca import __version__
from thelca.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    configure_logging,
)
from thelca.cli.health import health as run_health
from thelca.errors import ConfigurationError, ThelcaError
from thelca.settings import Settings, add_options

log = logging.getLogger("thelca")


def main(argv: Sequence[str] | None = None) -> int:
    """The command's exit status. Output into a closed pipe (`thelca ... | head`) ends it
    quietly with EXIT_BROKEN_PIPE, as Python's documentation of SIGPIPE recommends."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # what is still buffered meets the closed pipe here, not at exit
    except BrokenPipeError:
        # Python flushes stdout again as it exits: point it at /dev/null so that this
        # flush does not print the traceback this handler is here to avoid.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        settings = Settings.resolve(args)
    except ThelcaError as error:
        print(f"thelca: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    configure_logging(settings.log_level, settings.log_format)
    try:
        result: int = args.func(args, settings)
    except ThelcaError as error:
        log.error("%s", error)
        return EXIT_UNAVAILABLE
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thelca",
        description="An auditable item store driven by commands over RabbitMQ. "
        "Every setting comes from its flag or, failing that, its THELCA_* variable.",
    )
    parser.add_argument("--version", action="version", version=f"thelca {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    worker = sub.add_parser("worker", help="consume commands, reply, publish events",
                            description="Consume <prefix>.commands: check, apply, reply, "
                            "publish the event, ack once the broker confirmed it. With "
                            "--processes N (PostgreSQL only), start N such processes and "
                            "restart one that dies.")
    add_options(worker, "broker", "store", "worker", "logging", "metrics")
    worker.set_defaults(func=_run_worker, role_name="worker")

    logger = sub.add_parser("logger", help="append every event to the JSON-lines event log",
                            description="Consume <prefix>.events.log and append each event "
                            "as one line; fsync before ack.")
    add_options(logger, "broker", "logger", "logging", "metrics")
    logger.set_defaults(func=_run_role, role_name="logger")

    replay = sub.add_parser("replay", help="serve replay requests from the event log",
                            description="Consume <prefix>.replay: stream the log's matching "
                            "events to each subscriber that asks, then an end marker. Runs "
                            "where the logger writes the log.")
    add_options(replay, "broker", "replay", "logging", "metrics")
    replay.set_defaults(func=_run_role, role_name="replay")

    run = sub.add_parser("run", help="worker, logger and replay consumer together, for one "
                         "machine",
                         description="Start the worker (--processes of them), the logger and "
                         "the replay consumer as child processes, restart one that dies, stop "
                         "them all on SIGTERM or Ctrl-C.")
    add_options(run, "broker", "store", "worker", "logger", "replay", "logging", "metrics")
    run.set_defaults(func=_run_all)

    health = sub.add_parser(
        "health", help="exit 0 only when broker, worker, store and Authority answer",
        description="Exit 0 only when the broker answers, a worker consumes the commands "
        "queue, none is stuck on a batch that keeps failing, the store answers and, under "
        "jwt, the key set holds keys (an emptied or removed JWKS file revokes every token); "
        "3 otherwise. Says whether a logger runs (or is stuck) too, and the deduplication "
        "window with the age of the oldest processed-command record. With --role logger or "
        "replay: only the broker and that role's queue (and, for replay, the key set), so "
        "that a logger's or replay consumer's health does not depend on a worker.")
    health.add_argument("--role", choices=("worker", "logger", "replay"), default="worker",
                        help="whose health to check (default worker)")
    add_options(health, "broker", "store", "dedup", "authority", "logging")
    health.set_defaults(func=run_health)

    from thelca.cli.publish import add_publish_parser

    add_publish_parser(sub)
    from thelca.cli.dead import add_dead_parser
    add_dead_parser(sub)
    from thelca.cli.dev_keys import add_dev_keys_parsers
    add_dev_keys_parsers(sub)
    from thelca.cli.restore import add_restore_parsers
    add_restore_parsers(sub)
    from thelca.cli.audit import add_audit_parser
    add_audit_parser(sub)
    return parser


# ------------------------------------------------------------ long-running roles


def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    if settings.processes > 1:
        return _supervise(settings, with_logger=False)
    return _run_role(args, settings)


def _run_role(args: argparse.Namespace, settings: Settings) -> int:
    """One long-running role in this process (args.role_name: worker, logger or replay),
    until SIGTERM or Ctrl-C, with its metrics served."""
    from thelca import bootstrap

    builders: dict[str, Callable[[Settings], bootstrap.Role]] = {
        "worker": bootstrap.build_worker, "logger": bootstrap.build_logger,
        "replay": bootstrap.build_replay}
    role = builders[args.role_name](settings)
    _stop_on_signals(role.stop, args.role_name)
    _serve_metrics(settings)
    role.run()
    return 0


def _run_all(args: argparse.Namespace, settings: Settings) -> int:
    return _supervise(settings, with_logger=True)


def _supervise(settings: Settings, *, with_logger: bool) -> int:
    """Worker processes (and the logger) as children, restarted when they die."""
    from thelca.bootstrap import (
        check_authority_choice,
        check_processes,
        child_environment,
        worker_children,
    )
    from thelca.supervisor import supervise

    # Refuse here rather than let every child fail and be restarted.
    check_authority_choice(settings)
    check_processes(settings)
    children = worker_children(settings)
    if with_logger:  # `run`: everything one machine needs
        children["logger"] = ["logger"]
        children["replay"] = ["replay"]
    if settings.metrics_port:  # each child a port of its own: workers, logger, replay
        for offset, argv in enumerate(children.values()):
            argv += ["--metrics-port", str(settings.metrics_port + offset)]
    return supervise(children, child_environment(settings, dict(os.environ)))


def _serve_metrics(settings: Settings) -> None:
    from thelca.metrics import serve

    try:
        serve(settings.metrics_port, settings.metrics_host)
    except OSError as error:
        raise ConfigurationError(f"cannot serve metrics on {settings.metrics_host}:"
                                 f"{settings.metrics_port}: {error}") from error
    if settings.metrics_port:
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host,
                 settings.metrics_port)


def _stop_on_signals(stop: Callable[[], None], role: str) -> None:
    """First SIGTERM/SIGINT: finish what is in flight and stop. Second: exit at once."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:
            os._exit(128 + signum)
        received.append(signum)
        log.info("%s: received %s: finishing in-flight work, then stopping "
                 "(again to exit now)", role, signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
