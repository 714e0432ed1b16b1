"""The `thelca` command: a thin layer over bootstrap and the client."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

import orjson

from thelca import __version__
from thelca.errors import ThelcaError
from thelca.settings import Settings, add_options

log = logging.getLogger("thelca")

EXIT_REFUSED = 1  # the command got a reply whose status is not 200
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3  # no broker, no reply in time, or a bad configuration


def main(argv: Sequence[str] | None = None) -> int:
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
    _configure_logging(settings.log_level)
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
                            "publish the event, ack once the broker confirmed it.")
    add_options(worker, "broker", "store", "worker", "logging")
    worker.set_defaults(func=_run_worker)

    logger = sub.add_parser("logger", help="append every event to the JSON-lines event log",
                            description="Consume <prefix>.events.log and append each event "
                            "as one line; fsync before ack.")
    add_options(logger, "broker", "logger", "logging")
    logger.set_defaults(func=_run_logger)

    replay = sub.add_parser("replay", help="serve replay requests from the event log",
                            description="Consume <prefix>.replay: stream the log's matching "
                            "events to each subscriber that asks, then an end marker. Runs "
                            "where the logger writes the log.")
    add_options(replay, "broker", "replay", "logging")
    replay.set_defaults(func=_run_replay)

    run = sub.add_parser("run", help="worker, logger and replay consumer together, for one "
                         "machine",
                         description="Start the worker, the logger and the replay consumer "
                         "as child processes, restart one that dies, stop them all on "
                         "SIGTERM or Ctrl-C.")
    add_options(run, "broker", "store", "worker", "logger", "replay", "logging")
    run.set_defaults(func=_run_all)

    health = sub.add_parser("health", help="exit 0 only when the broker and the store answer")
    add_options(health, "broker", "store", "logging")
    health.set_defaults(func=_health)

    from thelca.publish_cli import add_publish_parser

    add_publish_parser(sub)
    from thelca.dead_cli import add_dead_parser
    add_dead_parser(sub)
    from thelca.restore_cli import add_restore_parsers
    add_restore_parsers(sub)
    return parser


# ------------------------------------------------------------ long-running roles


def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from thelca.bootstrap import build_worker

    role = build_worker(settings)
    _stop_on_signals(role.stop, "worker")
    role.run()
    return 0


def _run_logger(args: argparse.Namespace, settings: Settings) -> int:
    from thelca.bootstrap import build_logger

    role = build_logger(settings)
    _stop_on_signals(role.stop, "logger")
    role.run()
    return 0


def _run_replay(args: argparse.Namespace, settings: Settings) -> int:
    from thelca.bootstrap import build_replay

    role = build_replay(settings)
    _stop_on_signals(role.stop, "replay")
    role.run()
    return 0


def _run_all(args: argparse.Namespace, settings: Settings) -> int:
    from thelca.bootstrap import check_authority_choice

    check_authority_choice(settings)  # refuse to start the children without an Authority
    env = {**os.environ, **settings.environment()}
    roles = {role: _spawn(role, env) for role in ("worker", "logger", "replay")}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            os._exit(130)
        stopping = True
        log.info("stopping %s", ", ".join(roles))
        for process in roles.values():
            process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    restarts: dict[str, list[float]] = {role: [] for role in roles}
    while True:
        for role, process in list(roles.items()):
            code = process.poll()
            if code is None or stopping:
                continue
            recent = [t for t in restarts[role] if time.monotonic() - t < 60] + [time.monotonic()]
            restarts[role] = recent
            log.error("%s exited with %s; restarting it (%d restarts in the last minute)",
                      role, code, len(recent) - 1)
            time.sleep(min(30, len(recent)))
            roles[role] = _spawn(role, env)
        if stopping and all(p.poll() is not None for p in roles.values()):
            return 0
        time.sleep(0.2)


def _spawn(role: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # In a process group of its own a child does not get the terminal's Ctrl-C
    # directly; the parent forwards one SIGTERM, so a single Ctrl-C stops gently.
    return subprocess.Popen([sys.executable, "-m", "thelca", role], env=env, process_group=0)


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


# ------------------------------------------------------------ health


def _health(args: argparse.Namespace, settings: Settings) -> int:
    from thelca.amqp import queue_consumers
    from thelca.stores import open_store

    healthy = True
    try:
        consumers = queue_consumers(settings.amqp_url, settings.names.commands)
        print(f"broker: ok ({settings.names.commands} has {consumers} consumer(s))")
    except Exception as error:
        healthy = False
        print(f"broker: FAILED ({type(error).__name__}: {error})")
    try:
        store = open_store(settings.store, writer=False)
        store.ping()
        store.close()
        print("store: ok")
    except Exception as error:
        healthy = False
        print(f"store: FAILED ({type(error).__name__}: {error})")
    return 0 if healthy else EXIT_UNAVAILABLE


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pika's own INFO lines repeat what thelca says about connections.
    logging.getLogger("pika").setLevel(logging.WARNING)


def dump_json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
