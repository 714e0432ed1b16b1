"""What every subcommand module shares: exit statuses, argparse types, logging setup.

Subcommand modules import this module, never the package entry (thelca.cli.main),
so that the CLI has no import cycle.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_REFUSED = 1  # the command got a reply whose status is not 200
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3  # no broker, no reply in time, or a bad configuration
# stdout was a pipe its reader closed (`thelca ... | head`): what a shell reports for a
# program killed by SIGPIPE (128 + 13), so `set -o pipefail` still sees it.
EXIT_BROKEN_PIPE = 141


def configure_logging(level: str, format_: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if format_ == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        from thelca.logtext import OneRecordPerLine

        handler.setFormatter(OneRecordPerLine("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # pika's own INFO lines repeat what thelca says about connections.
    logging.getLogger("pika").setLevel(logging.WARNING)


def quiet_client_logs(level: str) -> None:
    """For a one-shot command that says what went wrong in one line of its own: no pika
    error lines and tracebacks, no client retry warnings, unless DEBUG was asked for."""
    if level.upper() == "DEBUG":
        return
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    logging.getLogger("thelca_client").setLevel(logging.ERROR)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def token_of(args: argparse.Namespace) -> str | None:
    """--token, else THELCA_TOKEN (the better place: a command line shows in ps)."""
    return args.token or os.environ.get("THELCA_TOKEN") or None
