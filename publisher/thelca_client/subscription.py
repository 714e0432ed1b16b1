"""Subscribing to thelca's events: the history from the replay consumer, then the live events.

The protocol of docs/contract.md ("Replay request"), done by the library, on a
connection of the subscription's own:

1. a queue of its own (exclusive, named by the broker) is bound to
   `<prefix>.events` and consumed: from then on every new event reaches it;
2. a second queue of its own receives the replay: a request to
   `<prefix>.replay` names it as reply_to, with `since`, `types` and the token
   (the jwt Authority wants the events:read scope);
3. the replayed events are given in log order, up to the end marker;
4. then the events of the first queue, in the order they came.

An event id is given once: ids already given are dropped, whether the replay
and the live queue both carry an event or the worker published one twice.

No gap between 3 and 4: an event published just before the bind reaches the
log a moment later, maybe after the replay read it. The replay is complete once
it holds an event that also came live, since the logger writes in the order
the broker routed. Until then the subscription asks again, SETTLE seconds
after the bind and then every SETTLE seconds, at most CATCH_UP_REPLAYS times in
all; a quiet system (no live event to compare) gets one more replay after
SETTLE. So history is complete when the logger keeps up within SETTLE seconds.

Reconnecting: when the connection is lost the subscription connects again
(trying forever, with backoff; only the first connect is bounded by the
client's timeout), binds a new queue and replays from the time of the last
event it gave, less MARGIN seconds (so that events whose times are out of log
order by a little are not missed), dropping the ids it already gave.

The broker's side of each connection (the two queues, one inbox for all they
hear) is thelca_client.subscription_session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Final, Self

import pika

from thelca_client.asyncio_connection import AsyncConnection
from thelca_client.asyncio_link import Lost
from thelca_client.broker import describe, renamed
from thelca_client.commands import new_id, outgoing
from thelca_client.contract import (
    REPLAY_END_HEADER,
    ContractError,
    Event,
    Names,
    decode_reply,
    encode_replay_request,
    parse_time,
)
from thelca_client.errors import ThelcaClientError, error_for
from thelca_client.subscription_session import (
    Delivery,
    LinkLost,
    Session,
    Sessions,
    Tick,
    Wake,
)

log = logging.getLogger(__name__)

SETTLE: Final = 1.0  # seconds the logger is given to write what was published before the bind
CATCH_UP_REPLAYS: Final = 5  # replays at most per (re)connect while no live event overlaps
MARGIN: Final = timedelta(seconds=10)  # how far back a resumed replay starts
RECENT_IDS: Final = 100_000  # event ids remembered to drop repeats


class _RecentIds:
    """The ids of the last `limit` events given, to drop repeats."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)


class Subscription:
    """An async iterator of thelca's events: history, then live ones; each event id once.

    Made by AsyncClient.subscribe. It connects on the first `anext`; close it
    (or use `async with`) to let go of its connection and queues.
    """

    def __init__(
        self,
        parameters: list[pika.URLParameters],
        names: Names,
        *,
        token: str | None,
        since: str | datetime | None,
        types: Iterable[str] | None,
        timeout: float,
    ) -> None:
        self.names = names
        # A connection of its own, named after the client's with " subscription" added.
        self._connection = AsyncConnection([renamed(each, " subscription") for each in parameters],
                                           queue=names.replay)
        self._token = token
        self._since = _time_text(since)
        self._types = None if types is None else tuple(types)
        self._timeout = timeout
        self._sessions = Sessions(self._connection, names, timeout=timeout)
        self._recent = _RecentIds(RECENT_IDS)
        self._last_time: datetime | None = None  # the latest time among the events given
        self._session: Session | None = None
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            self._session.inbox.put_nowait(Wake())
        await self._connection.close()

    async def __anext__(self) -> Event:
        while not self._closed:
            if self._session is None:
                try:
                    self._session = await self._start()
                except ThelcaClientError:
                    if self._closed:  # closed while connecting: the end, not an error
                        break
                    raise
                continue
            event = await self._step(self._session)
            if event is not None:
                return event
        raise StopAsyncIteration

    # ------------------------------------------------------------ one step at a time

    async def _step(self, session: Session) -> Event | None:
        """The next event to give, or None when this step gave none."""
        if not session.catching_up and session.held:
            delivery, event = session.held.popleft()
            session.ack(delivery)
            return self._give(event)
        item = await self._next_item(session)
        if isinstance(item, Wake):
            return None
        if isinstance(item, LinkLost):
            await self._lose(session, item.error)
            return None
        if isinstance(item, Tick):
            await self._ask(session)
            return None
        if item.live:
            return self._on_live(session, item)
        return self._on_replayed(session, item)

    async def _next_item(self, session: Session) -> Delivery | LinkLost | Tick | Wake:
        if session.request is None:
            return await session.inbox.get()
        # A replay is streaming: a replay consumer that stopped answering is an error.
        loop = asyncio.get_running_loop()
        left = session.heard_at + self._timeout - loop.time()
        try:
            return await asyncio.wait_for(session.inbox.get(), max(left, 0))
        except TimeoutError:
            raise ThelcaClientError(
                f"no replay consumer answered on {self.names.replay} within "
                f"{self._timeout:g} s: is `thelca replay` running with the same prefix?"
            ) from None

    def _on_live(self, session: Session, delivery: Delivery) -> Event | None:
        event = delivery.event()
        if session.catching_up:
            if event is None:
                session.ack(delivery)
            else:
                session.held.append((delivery, event))
            return None
        session.ack(delivery)
        return None if event is None else self._give(event)

    def _on_replayed(self, session: Session, delivery: Delivery) -> Event | None:
        session.ack(delivery)
        if delivery.properties.correlation_id != session.request:
            return None  # the rest of a replay from before a loss: not ours any more
        session.heard_at = asyncio.get_running_loop().time()
        if (delivery.properties.headers or {}).get(REPLAY_END_HEADER):
            self._on_end(session, delivery.body)
            return None
        event = delivery.event()
        if event is None:
            return None
        if event.id:
            session.replayed.add(event.id)
        moment = _moment(event)
        if moment is not None and (session.latest is None or moment > session.latest):
            session.latest = moment
        return self._give(event)

    def _on_end(self, session: Session, body: bytes) -> None:
        """The replay is over: go live, or ask again later (see the module's docstring)."""
        session.request = None
        try:
            end = decode_reply(body)
        except ContractError as error:
            raise ThelcaClientError(f"the replay's end marker does not follow the contract: "
                                    f"{error}") from None
        if not end.ok:
            raise error_for(end)
        wanted = [event for _, event in session.held if self._wanted(event)]
        overlap = any(event.id in session.replayed for event in wanted)
        quiet_and_settled = not wanted and session.replays >= 2
        if overlap or quiet_and_settled or session.replays >= CATCH_UP_REPLAYS:
            session.catching_up = False
            return
        loop = asyncio.get_running_loop()
        at = max(loop.time(), session.bound_at + SETTLE * session.replays)
        loop.call_at(at, session.inbox.put_nowait, Tick())

    def _give(self, event: Event) -> Event | None:
        """The event, unless it was given before or its type is not wanted."""
        if not self._wanted(event):
            return None
        if event.id:  # the original server's lines have none: nothing to drop them by
            if event.id in self._recent:
                return None
            self._recent.add(event.id)
        moment = _moment(event)
        if moment is not None and (self._last_time is None or moment > self._last_time):
            self._last_time = moment
        return event

    def _wanted(self, event: Event) -> bool:
        return self._types is None or event.type in self._types

    # ------------------------------------------------------------ replay requests

    async def _start(self) -> Session:
        session = await self._sessions.start()  # retried while the broker is away
        await self._ask(session)
        return session

    async def _ask(self, session: Session) -> None:
        """Send a replay request: since the resume point, or since the last replay's events."""
        since = self._since
        # The first replay of a connection resumes after what was given; a later one
        # goes back only a little before what the replays of this connection carried.
        resume = self._last_time if session.replays == 0 else session.latest or self._last_time
        if resume is not None:
            start = resume - MARGIN
            if since is None or start > parse_time(since):
                since = start.isoformat()
        session.request = new_id()
        session.replays += 1
        session.heard_at = asyncio.get_running_loop().time()
        message = outgoing(encode_replay_request(since=since, types=self._types),
                           token=self._token, message_id=None)
        # A loss: the session's inbox hears of it, and the subscription resumes.
        with contextlib.suppress(Lost):
            await session.link.publish(message, self.names.replay, session.request,
                                       reply_to=session.replay_queue)

    async def _lose(self, session: Session, error: BaseException) -> None:
        if self._session is session:
            self._session = None
        if not self._closed:
            log.warning("subscription: the connection was lost (%s); resuming",
                        describe(error) if isinstance(error, Exception) else "lost")


def _moment(event: Event) -> datetime | None:
    try:
        return parse_time(event.time)
    except ValueError:
        return None


def _time_text(since: str | datetime | None) -> str | None:
    """`since` as the contract's text; ValueError for a time without a UTC offset."""
    if since is None:
        return None
    if isinstance(since, datetime):
        if since.tzinfo is None:
            raise ValueError("since has no UTC offset: give an aware datetime")
        return since.isoformat()
    parse_time(since)
    return since
