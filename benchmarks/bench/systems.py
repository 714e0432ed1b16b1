"""The systems a run measures, each started on a prefix of its own and cleaned up after.

floor, ceiling, echo and the guarded floors are the scripts beside this package; sqlite, pg1 and
pg2 are `thelca worker` and `thelca logger` with every guarantee on, on the
default SQLite store or on PostgreSQL (a schema of its own per run, dropped
afterwards, as the tests do).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bench.load import URL
from bench.processes import delete, start, stop, wait_consumed

HERE = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("THELCA_TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/test"
THELCA = [sys.executable, "-m", "thelca"]
LABELS = {
    "floor": "floor (pika, no persistence)",
    "echo": "echo through a quorum queue",
    "ceiling": "ceiling (async pika, no guarantee)",
    "guarded": "guarded floor, SQLite (window 1)",
    "guarded-pg": "guarded floor, PostgreSQL (window 1)",
    "sqlite": "thelca, SQLite",
    "pg1": "thelca, PostgreSQL, 1 worker",
    "pg2": "thelca, PostgreSQL, 2 workers",
}
NAMES = tuple(LABELS)
THELCA_SYSTEMS = ("sqlite", "pg1", "pg2")
# Measured one command at a time only (their blocking confirms make no throughput figure),
# each the reference for the thelca systems on its store: what the guarantees alone cost.
LATENCY_ONLY = {"guarded": ("sqlite",), "guarded-pg": ("pg1", "pg2")}


@dataclass
class System:
    """One running system: where to send its commands, and what the run learns of it."""

    name: str
    prefix: str
    log: Path | None = None  # its event log, for the log lag
    worker_pid: int | None = None  # one worker process, for its RSS
    items: list[dict[str, Any]] = field(default_factory=list)  # for the mix
    events: int = 0  # events its log should hold (one per 200 reply)
    audit: subprocess.CompletedProcess[str] | None = None  # `thelca audit` after it stopped

    @property
    def label(self) -> str:
        return LABELS[self.name]


@dataclass(frozen=True)
class Keys:
    """The run's checkpoint signing key and its public half."""

    private: Path
    public: Path


@contextmanager
def running(name: str, work: Path, keys: Keys) -> Iterator[System]:
    if name == "echo":
        with script(name, work, [str(HERE / "echo.py")], logger=None) as system:
            yield system
    elif name in ("floor", "ceiling"):
        path = str(HERE / f"{name}.py")
        with script(name, work, [path, "worker"], logger=[path, "logger"]) as system:
            yield system
    elif name == "guarded":
        with guarded(name, work, str(work / "guarded.db")) as system:
            yield system
    elif name == "guarded-pg":
        with postgres_schema() as url, guarded(name, work, url) as system:
            yield system
    elif name == "sqlite":
        with thelca(name, work, f"sqlite:///{work / 'thelca.db'}", 1, keys) as system:
            yield system
    else:
        with postgres_schema() as url, thelca(name, work, url, int(name[2:]), keys) as system:
            yield system


@contextmanager
def guarded(name: str, work: Path, store: str) -> Iterator[System]:
    """benchmarks/guarded.py, the floor's work with thelca's guarantees, on `store`."""
    path = str(HERE / "guarded.py")
    with script(name, work, [path, "worker"], logger=[path, "logger"],
                after_prefix=[store], also_delete=["dead"]) as system:
        yield system


@contextmanager
def script(name: str, work: Path, worker: list[str], logger: list[str] | None,
           after_prefix: list[str] | None = None,
           also_delete: list[str] | None = None) -> Iterator[System]:
    """A benchmark script's worker (and logger), stopped by SIGINT as they expect.

    `after_prefix`: the worker's arguments after the prefix; `also_delete`: exchanges it
    declares beside those of the floor.
    """
    prefix = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    log = work / f"{name}-events.log" if logger else None
    env = dict(os.environ)
    processes = [start([sys.executable, *worker, prefix, *(after_prefix or [])], env,
                       work / f"{name}-worker.out")]
    if logger:
        processes.append(start([sys.executable, *logger, prefix, str(log)], env,
                               work / f"{name}-logger.out"))
    try:
        wait_consumed(f"{prefix}.commands")
        if logger:
            wait_consumed(f"{prefix}.events.log")
        yield System(name, prefix, log)
    finally:
        stop(processes, signal.SIGINT)
        if logger:
            delete(prefix, ["commands", "events.log"], ["events", *(also_delete or [])])
        else:
            delete(prefix, ["commands"], [])


@contextmanager
def thelca(name: str, work: Path, store: str, processes: int, keys: Keys,
           profile: Path | None = None) -> Iterator[System]:
    """`thelca worker` (--processes N) and `thelca logger`; their log audited once stopped.

    With `profile`, the worker runs under cProfile, which writes there when it stops.
    """
    prefix = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    log = work / f"{name}-events.log"
    env = {**os.environ, "THELCA_PREFIX": prefix, "THELCA_AUTHORITY": "test-only",
           "THELCA_STORE": store, "THELCA_EVENT_LOG": str(log), "THELCA_LOG_LEVEL": "WARNING",
           "THELCA_AMQP_URL": URL, "THELCA_LOG_SIGNING_KEY": str(keys.private)}
    many = ["--processes", str(processes)] if processes > 1 else []
    profiled = [sys.executable, "-m", "cProfile", "-o", str(profile), *THELCA[1:]]
    worker = start([*(profiled if profile else THELCA), "worker", *many], env,
                   work / f"{name}-worker.out")
    logger = start([*THELCA, "logger"], env, work / f"{name}-logger.out")
    system = System(name, prefix, log, worker.pid if processes == 1 else None)
    try:
        wait_consumed(f"{prefix}.commands", consumers=processes)
        wait_consumed(f"{prefix}.events.log")
        yield system
    finally:
        stop([worker, logger])
        delete(prefix, ["commands", "events.log", "dead", "replay"],
               ["events", "dead", "checkpoints"])
    system.audit = subprocess.run(
        [*THELCA, "audit", "--log", str(log), "--public-key", str(keys.public)],
        capture_output=True, text=True, check=False)


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A store URL on PG_URL with a schema nobody uses, dropped afterwards (as the tests do)."""
    import psycopg
    from psycopg import sql

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(PG_URL)
    query = urlencode([*parse_qsl(parts.query), ("schema", schema)])
    try:
        yield urlunsplit(parts._replace(query=query))
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))


def check_postgres() -> str | None:
    """Why PG_URL cannot be used, or None when it answers."""
    import psycopg

    try:
        psycopg.connect(PG_URL, connect_timeout=5).close()
    except psycopg.Error as error:
        return f"no PostgreSQL answered at {PG_URL} ({str(error).strip()})"
    return None


def make_keys(work: Path) -> Keys:
    """An Ed25519 key pair for the run's checkpoints."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    keys = Keys(work / "log-signing.pem", work / "log-signing.pub.pem")
    keys.private.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    keys.public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return keys
