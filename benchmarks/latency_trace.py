"""Run a thelca role with timestamps along each command's path, for latency_ladder.py.

    python benchmarks/latency_trace.py TRACE_FILE worker    # any `thelca` arguments

Runs `thelca ARGS` in this process with light hooks that note, on the
system-wide monotonic clock (time.monotonic, the clock the ladder's client
uses too), when the worker reads a command, starts its batch, opens and
commits the store's transaction, writes to a socket, gets a publisher
confirm and acks, each with the CPU time its thread had used by then; at exit
the notes go to TRACE_FILE as JSON. A note costs two clock reads and a list
append (about a microsecond): the traced figures are the untraced ones within
the noise, and the ladder says which it ran.

The hooks wrap methods by name; when a name moves, this fails at start
rather than tracing nothing.
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

NOTES: list[tuple[float, str, Any, float]] = []


def note(kind: str, detail: Any = None) -> None:
    """When (the monotonic clock), what, and the CPU time the noting thread has used so far."""
    NOTES.append((time.monotonic(), kind, detail, time.thread_time()))


def wrap(owner: Any, name: str, before: Callable[..., None] | None = None,
         after: str | None = None) -> None:
    """Replace owner.name by a function that calls before(*args) first and notes `after` last."""
    original = getattr(owner, name)

    def traced(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(*args, **kwargs)
        try:
            return original(*args, **kwargs)
        finally:
            if after is not None:
                note(after)

    setattr(owner, name, traced)


def hook_sockets() -> None:
    """Note every write and every read that got data, with the socket's file descriptor."""
    send, recv = socket.socket.send, socket.socket.recv

    def traced_send(sock: socket.socket, data: Any, *args: Any) -> int:
        note("send", sock.fileno())
        return send(sock, data, *args)

    def traced_recv(sock: socket.socket, size: int, *args: Any) -> bytes:
        data = recv(sock, size, *args)
        note("read", sock.fileno())
        return data

    socket.socket.send = traced_send  # type: ignore[method-assign,assignment]
    socket.socket.recv = traced_recv  # type: ignore[method-assign,assignment]


def hook_transactions(store_class: Any) -> None:
    original = store_class.transaction

    @contextmanager
    def traced(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        note("begin")
        with original(self, *args, **kwargs) as tx:
            note("body")
            yield tx
            note("commit")
        note("committed")

    store_class.transaction = traced


def install() -> None:
    import pika.channel
    import psycopg

    from thelca.amqp import batch, replies, session
    from thelca.stores.postgres import PostgresStore
    from thelca.stores.sqlite import SQLiteStore

    hook_sockets()
    hook_transactions(SQLiteStore)
    hook_transactions(PostgresStore)
    wrap(batch._BatchSession, "_on_message",
         before=lambda _self, _ch, _method, properties, _body: note("recv", properties.message_id))
    wrap(batch._BatchSession, "_flush", before=lambda _self: note("flush"), after="flushed")
    wrap(session.ConnectionSession, "_on_confirm", before=lambda _self, _frame: note("confirm"))
    wrap(replies.ReplyConnection, "_on_confirm",
         before=lambda _self, _frame: note("reply_confirm"))
    wrap(replies.ReplyConnection, "publish",
         before=lambda _self, _message, *_a, **_k: note("reply"))
    wrap(pika.channel.Channel, "basic_ack", before=lambda *_a, **_k: note("ack"))
    # psycopg's Connection.wait runs once per operation it hands the server (a statement,
    # a commit, a pipeline's sync...), whether or not the client then reads an answer:
    # noted as psycopg waits, not round trips (benchmarks/pg_roundtrips.py counts those).
    wrap(psycopg.Connection, "wait", before=lambda *_a, **_k: note("pg_wait"))


def main() -> int:
    trace_file, args = Path(sys.argv[1]), sys.argv[2:]
    install()
    atexit.register(lambda: trace_file.write_bytes(orjson.dumps(NOTES)))
    from thelca.cli.main import main as thelca

    profile = os.environ.get("LATENCY_TRACE_PROFILE")
    if not profile:
        return thelca(args)
    import cProfile

    profiler = cProfile.Profile(time.thread_time)  # CPU time: waiting is not work
    try:
        return int(profiler.runcall(thelca, args))
    finally:
        profiler.dump_stats(profile)


if __name__ == "__main__":
    sys.exit(main())
