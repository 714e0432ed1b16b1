"""Settings: each one from its flag or, failing that, its environment variable.

Defaults are resolved after parsing, never shown from the environment in
--help, so that a password in THELCA_AMQP_URL cannot leak through --help.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from thelca.errors import ConfigurationError
from thelca_client.contract import DEFAULT_AMQP_URL, DEFAULT_MAX_BODY, DEFAULT_PREFIX, Names


@dataclass(frozen=True)
class Option:
    flag: str
    env: str
    default: str | None
    help: str


OPTIONS: dict[str, Option] = {
    "amqp_url": Option("--amqp-url", "THELCA_AMQP_URL", DEFAULT_AMQP_URL,
                       "broker URL; a comma-separated list is tried in turn"),
    "prefix": Option("--prefix", "THELCA_PREFIX", DEFAULT_PREFIX,
                     "prefix of every broker object"),
    "store": Option("--store", "THELCA_STORE", "sqlite:///thelca.db",
                    "item store: sqlite:///PATH, memory:"),
    "event_log": Option("--event-log", "THELCA_EVENT_LOG", "thelca-events.log",
                        "the logger's JSON-lines file"),
    "event_log_max_bytes": Option(
        "--event-log-max-bytes", "THELCA_EVENT_LOG_MAX_BYTES", "0",
        "rotate the event log into numbered segments at this size in bytes; 0: never"),
    "replay_streams": Option("--replay-streams", "THELCA_REPLAY_STREAMS", "4",
                             "replay requests streamed at once, taking turns"),
    "authority": Option("--authority", "THELCA_AUTHORITY", None,
                        "who checks tokens: test-only (development only); no default"),
    "max_body": Option("--max-body", "THELCA_MAX_BODY", str(DEFAULT_MAX_BODY),
                       "largest command body in bytes; larger ones get 413"),
    "prefetch": Option("--prefetch", "THELCA_PREFETCH", "200",
                       "deliveries in flight per consumer (also the largest batch)"),
    "log_level": Option("--log-level", "THELCA_LOG_LEVEL", "INFO",
                        "DEBUG, INFO, WARNING or ERROR"),
}

GROUPS = {
    "broker": ("amqp_url", "prefix"),
    "store": ("store",),
    "worker": ("authority", "max_body", "prefetch"),
    "logger": ("event_log", "event_log_max_bytes", "prefetch"),
    "replay": ("authority", "event_log", "replay_streams"),
    "logging": ("log_level",),
}


def add_options(parser: argparse.ArgumentParser, *groups: str) -> None:
    """Add the flags of the named groups, each once, with its variable and default in --help."""
    seen: set[str] = set()
    for group in groups:
        for name in GROUPS[group]:
            if name in seen:
                continue
            seen.add(name)
            option = OPTIONS[name]
            default = f"; default {option.default}" if option.default else ""
            text = f"{option.help} (env {option.env}{default})".replace("%", "%%")
            parser.add_argument(option.flag, dest=name, default=None, help=text)


@dataclass(frozen=True)
class Settings:
    amqp_url: str = DEFAULT_AMQP_URL
    prefix: str = DEFAULT_PREFIX
    store: str = "sqlite:///thelca.db"
    event_log: str = "thelca-events.log"
    event_log_max_bytes: int = 0
    replay_streams: int = 4
    authority: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    prefetch: int = 200
    log_level: str = "INFO"

    @property
    def names(self) -> Names:
        return Names(self.prefix)

    @classmethod
    def resolve(
        cls, args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Flag, else environment variable, else default; integers checked here."""
        environ = os.environ if environ is None else environ
        given = vars(args) if args is not None else {}
        values: dict[str, Any] = {}
        for f in fields(cls):
            option = OPTIONS[f.name]
            raw = given.get(f.name)
            if raw is None:
                raw = environ.get(option.env) or option.default
            values[f.name] = raw
        for name in ("max_body", "prefetch", "replay_streams"):
            values[name] = _positive_int(name, values[name])
        values["event_log_max_bytes"] = _positive_int(
            "event_log_max_bytes", values["event_log_max_bytes"], least=0)
        try:
            Names(values["prefix"])
        except ValueError as error:
            raise ConfigurationError(f"{OPTIONS['prefix'].env}: {error}") from None
        return cls(**values)

    def environment(self) -> dict[str, str]:
        """These settings as environment variables, for child processes."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                env[OPTIONS[f.name].env] = str(value)
        return env


def _positive_int(name: str, raw: Any, least: int = 1) -> int:
    option = OPTIONS[name]
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{option.flag} / {option.env} must be a whole number") from None
    if value < least:
        raise ConfigurationError(f"{option.flag} / {option.env} must be at least {least}")
    return value
