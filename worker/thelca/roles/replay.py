"""Replay: the events of the log, streamed to a subscriber that asks for them.

A request whose reply_to names one of thelca's own queues (the log's, the
commands', the dead letters') is not answered at all: it goes to the dead
letters without its token, so that no client can turn the log into messages
published into thelca. Any other request is checked in this order: the token
(401), the Authority's `check_read_events` (403), then the body (400). A
refused request gets only the end marker, with its status and an error. An
accepted one reads the log as it is when its stream starts (segments, then
the live file: a LogSnapshot) and yields each matching event as its own
message, in log order, with the same body as on the fanout exchange, then
the end marker with the count.

The log is read through a sparse index by time and type (eventlog.index),
shared by every request: chunks that cannot hold a matching line are not
read, so a request costs what it returns and the chunks of its time range,
not the whole log, once those chunks are indexed.

Nothing here knows about pika: the AMQP side (thelca.amqp.streams) asks each
stream for a few messages at a time and publishes them with flow control.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

from thelca import metrics
from thelca.audit.chain import without_prev
from thelca.authority.base import Authority
from thelca.errors import CommandRefused
from thelca.eventlog.format import LogLine
from thelca.eventlog.index import LogIndex, read_chunks
from thelca.eventlog.reader import LogSnapshot
from thelca.logtext import shown
from thelca.roles.messages import (
    EventStream,
    Incoming,
    Outgoing,
    dead_letter,
    hijacked_reason,
    unreadable,
    unreadable_why,
)
from thelca.roles.replay_filter import Matcher
from thelca_client.contract import (
    REPLAY_END_HEADER,
    STATUS_HEADER,
    ContractError,
    Names,
    ReplayRequest,
    bearer_token,
    decode_replay_request,
    dumps,
)

log = logging.getLogger(__name__)

MAX_REQUEST_BODY = 64 * 1024  # a replay request is three small fields
LINES_PER_TAKE = 5000  # lines read at most per take(), so a sparse filter cannot hog the loop


class ReplayRole:
    """The replay role: opens a stream of the event log for each replay request, and keeps
    the log's index for all of them."""

    def __init__(self, log_path: str | Path, authority: Authority, names: Names) -> None:
        self.log_path = Path(log_path)
        self.authority = authority
        self.names = names
        self.index = LogIndex()

    def broken(self, request: Incoming, error_id: str) -> ReplayStream:
        return self.refused(request, 500, "internal error; the replay consumer's log has it "
                            f"under error id {error_id}")

    def refused(self, request: Incoming, status: int, error: str) -> ReplayStream:
        """A stream of one end marker with this status and error."""
        return ReplayStream(request.reply_to, request.correlation_id or request.message_id,
                            None, status=status, error=error)

    def open(self, request: Incoming) -> EventStream:
        """The stream that answers this request: the events, or a refusal."""
        correlation_id = request.correlation_id or request.message_id
        if self.names.owns(request.reply_to):
            return self._hijacked(request)
        if not request.reply_to:
            log.warning("replay: a request without reply_to (correlation_id %s) cannot be "
                        "answered; dropped", shown(correlation_id))
            return ReplayStream(None, correlation_id, None, status=400, error="no reply_to")
        unusable = unreadable(request)
        if unusable:  # refused before the token, like a request without reply_to
            why = unreadable_why(unusable)
            log.warning("replay: a request was refused: %s", why)
            reply_to = None if "reply_to" in unusable else request.reply_to
            return ReplayStream(reply_to, correlation_id, None, status=400, error=why)
        try:
            user, wanted = self._check(request)
        except (CommandRefused, ContractError) as refused:
            log.info("replay: request %s refused with %d: %s", shown(correlation_id),
                     refused.status, shown(str(refused)))
            return ReplayStream(request.reply_to, correlation_id, None, status=refused.status,
                                error=str(refused))
        log.info("replay: request %s from %s: since %s, until %s, types %s",
                 shown(correlation_id), shown(user), shown(wanted.since), shown(wanted.until),
                 shown(", ".join(wanted.types)) if wanted.types is not None else "all")
        return ReplayStream(request.reply_to, correlation_id, self.log_path, wanted=wanted,
                            user=user, index=self.index)

    def _hijacked(self, request: Incoming) -> EventStream:
        """Not answered, since its reply_to is thelca's own: the dead letters keep it."""
        reason = hijacked_reason(request.reply_to, "not answered")
        log.warning("replay: request %s went to %s: %s",
                    shown(request.correlation_id or request.message_id), self.names.dead,
                    reason)
        metrics.DEAD_LETTERS.labels("replay").inc()
        return DeadLettered(dead_letter(request, self.names.dead, reason))

    def _check(self, request: Incoming) -> tuple[str, ReplayRequest]:
        """The user and the request, in the order: token (401), scope (403), body (400)."""
        principal = self.authority.authenticate(bearer_token(request.headers))
        user = self.authority.check_read_events(principal)
        if len(request.body) > MAX_REQUEST_BODY:
            raise ContractError(f"the request is larger than {MAX_REQUEST_BODY} bytes")
        return user, decode_replay_request(request.body or b"{}")


class ReplayStream:
    """One request being answered: take() gives its messages a few at a time.

    The last message is the end marker (header x-replay-end: true); after it
    `finished` is true. A stream with nowhere to reply (no reply_to) is
    finished from the start. The log is opened at the first take(), so that a
    request that waits for its turn holds no file. `user` is who asked (None
    for a refusal, which costs nothing to answer).
    """

    def __init__(
        self,
        reply_to: str | None,
        correlation_id: str | None,
        log_path: Path | None,
        *,
        wanted: ReplayRequest | None = None,
        user: str | None = None,
        index: LogIndex | None = None,
        status: int = 200,
        error: str | None = None,
    ) -> None:
        self.reply_to = reply_to
        self.correlation_id = correlation_id
        self.user = user
        self.status = status
        self.error = error
        self.count = 0
        self.lines_read = 0
        self.chunks_skipped = 0
        self.finished = reply_to is None
        self.started: float | None = None
        self._log_path = log_path if wanted is not None else None
        self._wanted = wanted
        self._index = index or LogIndex()
        self._snapshot: LogSnapshot | None = None
        self._events: Iterator[LogLine | None] = iter(())

    def take(self, limit: int) -> list[Outgoing]:
        """Up to `limit` messages, fewer when LINES_PER_TAKE lines matched nothing more."""
        if self.finished or self.reply_to is None:
            return []
        if self.started is None:
            self.started = time.monotonic()
            self._open()
        out: list[Outgoing] = []
        try:
            for line in self._events:
                if line is None:  # LINES_PER_TAKE lines read: give the loop back
                    return out
                out.append(self._message(line))
                if len(out) >= limit:
                    return out
        except OSError as error:  # a segment removed or unreadable while streaming
            self._unreadable(error)
        out.append(self.end())
        self.finished = True
        log.info("replay: request %s: %d events sent in %.1fs (%d lines read, %d chunks "
                 "skipped)", shown(self.correlation_id), self.count,
                 time.monotonic() - self.started, self.lines_read, self.chunks_skipped)
        return out

    def _open(self) -> None:
        """Take the snapshot of the log this stream answers from (none: an empty replay)."""
        if self._log_path is None or self._wanted is None:
            return
        try:
            self._snapshot = LogSnapshot(self._log_path)
        except FileNotFoundError:
            return  # no event was ever logged: an empty replay
        except OSError as error:
            self._unreadable(error)
            return
        self._events = self._matching(self._snapshot, self._wanted)

    def _unreadable(self, error: OSError) -> None:
        log.error("replay: request %s: the event log could not be read: %s",
                  shown(self.correlation_id), error)
        self.status, self.error = 500, ("the event log could not be read; the replay "
                                        "consumer's log says why")

    def _message(self, line: LogLine) -> Outgoing:
        assert line.event is not None and self.reply_to is not None
        self.count += 1
        event_id, kind = line.event.get("id"), line.event.get("type")
        return Outgoing(
            "", self.reply_to, without_prev(line.raw), correlation_id=self.correlation_id,
            message_id=event_id if isinstance(event_id, str) else None,
            type=kind if isinstance(kind, str) else None,
        )

    def end(self) -> Outgoing:
        """The end marker: the count of events sent, or the refusal."""
        assert self.reply_to is not None
        body: dict[str, object] = {"status": self.status}
        if self.status in (200, 500):
            body["count"] = self.count
        if self.error is not None:
            body["error"] = self.error
        return Outgoing("", self.reply_to, dumps(body), correlation_id=self.correlation_id,
                        headers={REPLAY_END_HEADER: True, STATUS_HEADER: self.status})

    def close(self) -> None:
        """Stop early (the subscriber is gone, or the consumer stops): release the log."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()
        if self._snapshot is not None:
            self._snapshot.close()
        self.finished = True

    def _matching(
        self, snapshot: LogSnapshot, wanted: ReplayRequest
    ) -> Iterator[LogLine | None]:
        """The snapshot's events that match, in log order; None after every LINES_PER_TAKE
        lines read (a chunk skipped counts as one), so that the caller can hand the loop
        back between reads."""
        matches = Matcher(wanted)
        work = 0
        for lines in read_chunks(snapshot, self._index, matches.may_hold):
            if not lines:
                self.chunks_skipped += 1
                work += 1
            for line in lines:
                self.lines_read += 1
                work += 1
                if matches(line):
                    yield line
                if work >= LINES_PER_TAKE:
                    work = 0
                    yield None
            if work >= LINES_PER_TAKE:
                work = 0
                yield None


class DeadLettered:
    """A request not answered but dead-lettered: its one message is the dead letter."""

    def __init__(self, letter: Outgoing) -> None:
        self.letter = letter
        self.finished = False
        self.user: str | None = None  # costs nothing: it never waits for a turn

    def take(self, limit: int) -> list[Outgoing]:
        if self.finished:
            return []
        self.finished = True
        return [self.letter]

    def close(self) -> None:
        self.finished = True
