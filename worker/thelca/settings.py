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
from thelca.stores.base import DEFAULT_DEDUP_WINDOW
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
                    "item store: sqlite:///PATH, memory: or postgresql://USER@HOST/DB?schema=NAME"),
    "event_log": Option("--event-log", "THELCA_EVENT_LOG", "thelca-events.log",
                        "the logger's JSON-lines file"),
    "amqp_ca_file": Option("--amqp-ca-file", "THELCA_AMQP_CA_FILE", None,
                           "amqps: PEM file of the CAs that sign the broker's certificate "
                           "(default: the system's)"),
    "amqp_cert_file": Option("--amqp-cert-file", "THELCA_AMQP_CERT_FILE", None,
                             "amqps: PEM client certificate, for brokers that ask for one"),
    "amqp_key_file": Option("--amqp-key-file", "THELCA_AMQP_KEY_FILE", None,
                            "amqps: PEM private key of the client certificate"),
    "event_log_max_bytes": Option(
        "--event-log-max-bytes", "THELCA_EVENT_LOG_MAX_BYTES", "0",
        "rotate the event log into numbered segments at this size in bytes; 0: never"),
    "log_signing_key": Option(
        "--log-signing-key", "THELCA_LOG_SIGNING_KEY", None,
        "PEM Ed25519 private key that signs the event log's checkpoints (`thelca dev-keys` "
        "writes log-signing.pem); without one they are unsigned, with a warning"),
    "event_publishers": Option(
        "--event-publishers", "THELCA_EVENT_PUBLISHERS", None,
        "broker users whose events the logger writes, comma-separated (the worker's user); "
        "default any user, but always only events that came through <prefix>.events"),
    "replay_streams": Option("--replay-streams", "THELCA_REPLAY_STREAMS", "4",
                             "replay requests streamed at once, taking turns"),
    "authority": Option("--authority", "THELCA_AUTHORITY", None,
                        "who checks tokens: jwt, or test-only (development only); no default"),
    "jwks": Option("--jwks", "THELCA_JWKS", None,
                   "jwt: an https URL or a file of the JSON Web Key Set; keys chosen by kid"),
    "jwt_key_file": Option("--jwt-key-file", "THELCA_JWT_KEY_FILE", None,
                           "jwt: one PEM public key (instead of a JWKS)"),
    "jwt_algorithms": Option("--jwt-algorithms", "THELCA_JWT_ALGORITHMS", "RS256,ES256",
                             "jwt: the allowed signature algorithms, comma-separated"),
    "jwt_issuer": Option("--jwt-issuer", "THELCA_JWT_ISSUER", None,
                         "jwt: the iss every token must have (unchecked when unset)"),
    "jwt_audience": Option("--jwt-audience", "THELCA_JWT_AUDIENCE", None,
                           "jwt: the aud every token must have (unchecked when unset)"),
    "jwt_leeway": Option("--jwt-leeway", "THELCA_JWT_LEEWAY", "30",
                         "jwt: seconds of clock skew allowed on exp, nbf and iat"),
    "max_body": Option("--max-body", "THELCA_MAX_BODY", str(DEFAULT_MAX_BODY),
                       "largest command body in bytes; larger ones get 413"),
    "prefetch": Option("--prefetch", "THELCA_PREFETCH", "200",
                       "deliveries in flight per consumer (also the largest batch)"),
    "dedup_window": Option(
        "--dedup-window", "THELCA_DEDUP_WINDOW", str(DEFAULT_DEDUP_WINDOW),
        "seconds a processed command's record answers its message_id; a re-send after it is "
        "a new command, and older records are pruned"),
    "processes": Option("--processes", "THELCA_PROCESSES", "1",
                        "worker processes to run; more than 1 needs a store that takes many "
                        "writers (postgresql://...), SQLite is one writer"),
    "log_level": Option("--log-level", "THELCA_LOG_LEVEL", "INFO",
                        "DEBUG, INFO, WARNING or ERROR"),
    "log_format": Option("--log-format", "THELCA_LOG_FORMAT", "text",
                         "text, or json (one object per line, for log shippers)"),
    "metrics_port": Option("--metrics-port", "THELCA_METRICS_PORT", "0",
                           "serve Prometheus /metrics on this port; 0 is off (several processes: "
                           "each the next port: workers, then logger, then replay)"),
    "metrics_host": Option("--metrics-host", "THELCA_METRICS_HOST", "127.0.0.1",
                           "address the metrics endpoint listens on"),
    "worker_broker_user": Option(
        "--worker-user", "THELCA_WORKER_BROKER_USER", None,
        "the worker's broker user: a letter counts as the worker's only when its user_id, "
        "which the broker checks, is this user (use it with per-role broker users)"),
}

JWT = ("jwks", "jwt_key_file", "jwt_algorithms", "jwt_issuer", "jwt_audience", "jwt_leeway")
GROUPS = {
    "broker": ("amqp_url", "prefix", "amqp_ca_file", "amqp_cert_file", "amqp_key_file"),
    "store": ("store",),
    "authority": ("authority", *JWT),
    "worker": ("authority", *JWT, "max_body", "prefetch", "dedup_window", "processes"),
    "dedup": ("dedup_window",),
    "logger": ("event_log", "event_log_max_bytes", "log_signing_key", "event_publishers",
               "prefetch"),
    "replay": ("authority", *JWT, "event_log", "replay_streams"),
    "logging": ("log_level", "log_format"),
    "metrics": ("metrics_port", "metrics_host"),
    "dead": ("worker_broker_user",),
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
    amqp_ca_file: str | None = None
    amqp_cert_file: str | None = None
    amqp_key_file: str | None = None
    event_log_max_bytes: int = 0
    log_signing_key: str | None = None
    event_publishers: str | None = None
    replay_streams: int = 4
    authority: str | None = None
    jwks: str | None = None
    jwt_key_file: str | None = None
    jwt_algorithms: str = "RS256,ES256"
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway: int = 30
    max_body: int = DEFAULT_MAX_BODY
    prefetch: int = 200
    dedup_window: int = DEFAULT_DEDUP_WINDOW
    processes: int = 1
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    worker_broker_user: str | None = None

    @property
    def names(self) -> Names:
        return Names(self.prefix)

    @property
    def publishers(self) -> frozenset[str] | None:
        """The broker users whose events the logger writes; None: any user's."""
        if self.event_publishers is None:
            return None
        return frozenset(u.strip() for u in self.event_publishers.split(",") if u.strip())

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
        for name in ("max_body", "prefetch", "processes", "replay_streams", "dedup_window"):
            values[name] = _positive_int(name, values[name])
        values["jwt_leeway"] = _whole_number("jwt_leeway", values["jwt_leeway"])
        values["event_log_max_bytes"] = _whole_number(
            "event_log_max_bytes", values["event_log_max_bytes"])
        values["metrics_port"] = _port(values["metrics_port"])
        if values["log_format"] not in ("text", "json"):
            raise ConfigurationError(f"{OPTIONS['log_format'].env} must be text or json")
        if str(values["log_level"]).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigurationError(
                f"{OPTIONS['log_level'].env} must be DEBUG, INFO, WARNING or ERROR")
        if values["event_publishers"] is not None and not values["event_publishers"].strip(", "):
            option = OPTIONS["event_publishers"]
            raise ConfigurationError(f"{option.flag} / {option.env} names no broker user: "
                                     "give the worker's user, or leave it unset for any")
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


def _port(raw: Any) -> int:
    option = OPTIONS["metrics_port"]
    try:
        port = int(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{option.flag} / {option.env} must be a port number") from None
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"{option.flag} / {option.env} must be between 0 and 65535")
    return port


def _positive_int(name: str, raw: Any) -> int:
    value = _whole_number(name, raw)
    if value < 1:
        option = OPTIONS[name]
        raise ConfigurationError(f"{option.flag} / {option.env} must be at least 1")
    return value


def _whole_number(name: str, raw: Any) -> int:
    option = OPTIONS[name]
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{option.flag} / {option.env} must be a whole number") from None
    if value < 0:
        raise ConfigurationError(f"{option.flag} / {option.env} must not be negative")
    return value
