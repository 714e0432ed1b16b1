"""A PostgreSQL transaction's round trips: BEGIN, reads ahead and COMMIT ride with statements.

At window 1 every batch is one command, and its latency is mostly round trips: BEGIN, the
read of its processed record, the read of its item, its held writes and COMMIT were five.
Here BEGIN is not sent on its own but in one pipeline with the transaction's first
statement; a read ahead (the batch's processed records) waits for the next statement and
goes with it; and the commit sends the held writes and COMMIT in one pipeline. A create is
then two round trips (BEGIN + its record's read; its writes + COMMIT), and a transaction
that only removes confirmed events from the outbox is one.

Nothing is given up for it: a held write that does not take raises in PostgreSQL itself
(thelca_check_written, see .held), so the COMMIT behind it in the pipeline is never run;
a COMMIT that PostgreSQL answers with ROLLBACK (a transaction that failed before) raises;
and a transaction that ends any other way is rolled back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, LiteralString

import psycopg
from psycopg.pq import TransactionStatus

from thelca.errors import StoreError
from thelca.stores.postgres.rows import _translated

log = logging.getLogger(__name__)

Sent = tuple[LiteralString, tuple[Any, ...]]  # a statement and its parameters
# A read sent with the next statement, and what takes its rows.
QueuedRead = tuple[LiteralString, tuple[Any, ...], Callable[[list[Any]], None]]


class _Pipelined:
    """The round trips of one transaction on the store's connection (autocommit, so that
    BEGIN is ours to send); every statement's error is translated."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._begun = False  # BEGIN sent (it goes with the first statement)
        self._queued: list[QueuedRead] = []
        self.spoiled = False  # a pipeline failed: the connection is to be replaced

    def _execute(self, query: LiteralString, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        if self._begun and not self._queued:
            try:
                return self._conn.execute(query, params)
            except psycopg.Error as error:
                raise _translated(error) from error
        return self._send([(query, params)])[-1]

    def _queue_read(self, query: LiteralString, params: tuple[Any, ...],
                    take: Callable[[list[Any]], None]) -> None:
        """Send this read with the next statement (or by _settle), not on its own."""
        self._queued.append((query, params, take))

    def _settle(self) -> None:
        """Send the reads still queued, when their answers are wanted now."""
        if self._queued:
            self._send([])

    def _send(self, statements: list[Sent], *, commit: bool = False
              ) -> list[psycopg.Cursor[Any]]:
        """The statements in one round trip: after BEGIN when it was not sent yet and the
        reads queued, and followed by COMMIT when asked (then the transaction is over)."""
        queued, self._queued = self._queued, []
        try:
            with self._conn.pipeline():
                if not self._begun:
                    self._conn.execute("BEGIN")
                    self._begun = True
                reads = [self._conn.execute(query, params) for query, params, _ in queued]
                cursors = [self._conn.execute(query, params) for query, params in statements]
                ended = self._conn.execute("COMMIT") if commit else None
        except psycopg.Error as error:
            # A statement that psycopg prepares (the server plans a prepared one once,
            # not at every use: half the time of a batch of one) in a pipeline that an
            # error aborts is never made, yet psycopg takes it as made ("prepared
            # statement _pg3_N does not exist" at its next use): this connection is not
            # to be used again. Errors are rare here (lost races, values PostgreSQL
            # cannot keep); a new connection costs a few milliseconds.
            self.spoiled = True
            raise _translated(error) from error
        if ended is not None and ended.statusmessage != "COMMIT":
            # PostgreSQL ends a failed transaction at COMMIT by rolling it back, silently.
            raise StoreError(f"the PostgreSQL store rolled the transaction back at COMMIT "
                             f"({ended.statusmessage})")
        for (_, _, take), cursor in zip(queued, reads, strict=True):
            take(cursor.fetchall())
        return cursors

    def _begin(self) -> None:
        """BEGIN now, when something must run inside the transaction on its own."""
        if not self._begun:
            self._send([])

    def _final_statements(self) -> list[Sent]:
        """What must be sent before COMMIT (held writes: see .deferred)."""
        return []

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._begin()  # else psycopg would open (and commit) a transaction of its own
        try:
            with self._conn.transaction():
                yield
        except psycopg.Error as error:
            # Opening, releasing or rolling back to the savepoint failed (the statements
            # inside translate their own): most likely the connection is gone.
            raise _translated(error) from error

    def commit(self) -> None:
        """Send what is held back and COMMIT, in one round trip; nothing when nothing
        was ever sent. Whatever fails here has rolled the transaction back."""
        statements = self._final_statements()
        if not self._begun and not statements and not self._queued:
            return  # the queued reads' answers are unwanted now
        if self._conn.pgconn.transaction_status == TransactionStatus.INERROR:
            raise StoreError("the PostgreSQL transaction failed before its commit")
        if not self._begun and not self._queued and len(statements) == 1:
            # One statement alone (removing confirmed events, at window 1 after every
            # command) is a transaction of its own: no BEGIN or COMMIT to send with it.
            query, params = statements[0]
            try:
                self._conn.execute(query, params)
            except psycopg.Error as error:
                raise _translated(error) from error
            return
        self._send(statements, commit=True)

    def rollback(self) -> bool:
        """End the transaction without keeping anything; False when that failed (the
        connection is then not to be used again)."""
        if self._conn.closed or self._conn.broken:
            return True  # nothing kept: the server rolls back what the connection left
        if self._conn.pgconn.transaction_status == TransactionStatus.IDLE:
            return True
        try:
            self._conn.execute("ROLLBACK")
        except psycopg.Error:
            log.warning("rolling a PostgreSQL transaction back failed", exc_info=True)
            return False
        return self._conn.pgconn.transaction_status == TransactionStatus.IDLE
