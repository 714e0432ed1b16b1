"""The asyncio client's link to the broker: confirms pipelined, replies routed by correlation id.

One pika AsyncioConnection on the running loop, with one channel for commands
under publisher confirms and a consumer on direct reply-to. Any number of
calls share it at once: a publish does not wait for the one before it; each
confirm (an ack, often with `multiple`) settles its publishes by delivery tag,
and each reply settles its call by correlation_id. Every command goes to the
default exchange with `mandatory`, so a missing queue is PublishFailed, never
a silent loss.

Connection loss: every call in flight learns of it at once, waits a backoff
of its own and runs again with the same message_id on a new connection, until
its own deadline; then ConnectionFailed, or ReplyTimeout when the command was
sent and no reply came. The calls share each new connection: the first to need
one starts connecting (each URL of the list in turn), the others wait for that
attempt. A nack counts as a loss of the link (its channel is never used again,
see broker.Nacked): every call on it runs again on a new one, and one whose
deadline passes after a nack raises PublishFailed. A broker that refuses the
login or the virtual host is not asked again: AccessRefused at once. No pika
exception leaves this module's public methods.

One connection and what waits on it is a Link (thelca_client.asyncio_link);
this module shares one at a time among the calls and makes the next.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import pika

from thelca_client.asyncio_link import Link, Lost, Refused
from thelca_client.broker import (
    Nacked,
    access_refused,
    backoff,
    describe,
    hosts,
    unreachable,
)
from thelca_client.commands import Outgoing, new_id
from thelca_client.errors import (
    ConnectionFailed,
    PublishFailed,
    ReplyTimeout,
    ThelcaClientError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


# ---------------------------------------------------------------- the shared connection


@dataclass
class _Progress:
    """How far one call got over its attempts: what its error says when time runs out."""

    sent: bool = False  # published on a connection at least once
    last: BaseException | None = None  # the last connection error


class AsyncConnection:
    """Carries commands to one queue and their replies back, on the running loop, many at once.

    It connects on its first call, not when made. All its calls must come from
    one event loop.
    """

    def __init__(self, parameters: list[pika.URLParameters], *, queue: str) -> None:
        self.parameters = parameters
        self.queue = queue
        self._link: Link | None = None
        self._connecting: asyncio.Task[Link] | None = None
        self._closed = False
        # Correlation ids only need to be unique among this client's own calls: a random
        # stem and a counter cost less than a uuid4 per attempt.
        self._stem = new_id()
        self._attempts = itertools.count()

    def hosts(self) -> str:
        return hosts(self.parameters)

    async def connect(self, *, timeout: float) -> Link:
        """The open link, connecting first if needed; ConnectionFailed when no broker answers."""
        deadline = asyncio.get_running_loop().time() + timeout
        progress = _Progress()
        delays = backoff()
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    return await self.ready(None)
            except Lost as lost:
                progress.last = lost.error
            except TimeoutError:
                pass
            if not await _pause(next(delays), deadline):
                raise unreachable(self.hosts(), progress.last or TimeoutError(), timeout, None,
                                  sent=False)

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    # ------------------------------------------------------------ calls

    async def call(self, message: Outgoing, *, timeout: float) -> bytes:
        """Publish the message with reply_to and return its reply's body.

        Each attempt has a new correlation_id, so a reply to an earlier attempt
        that comes late is not taken for this one's.
        """

        async def attempt(link: Link, progress: _Progress) -> bytes:
            correlation_id = f"{self._stem}.{next(self._attempts)}"
            reply = link.expect(correlation_id)
            try:
                confirmed = link.publish(message, self.queue, correlation_id)
                progress.sent = True
                await confirmed
                return await reply
            finally:
                link.forget(correlation_id)

        return await self._retrying(message.message_id, timeout, attempt, replies=True)

    async def publish(self, message: Outgoing, *, timeout: float) -> None:
        """Publish the message without reply_to; return once the broker confirmed it."""

        async def attempt(link: Link, progress: _Progress) -> None:
            confirmed = link.publish(message, self.queue, None)
            progress.sent = True
            await confirmed

        await self._retrying(message.message_id, timeout, attempt, replies=False)

    async def _retrying(
        self,
        message_id: str,
        timeout: float,
        attempt: Callable[[Link, _Progress], Awaitable[T]],
        *,
        replies: bool,
    ) -> T:
        """attempt's result, running it again on a new connection after each loss."""
        deadline = asyncio.get_running_loop().time() + timeout
        progress = _Progress()
        delays = backoff()
        failures = 0
        while True:
            link: Link | None = None
            try:
                async with asyncio.timeout_at(deadline):
                    link = await self.ready(message_id)
                    return await attempt(link, progress)
            except Lost as lost:
                progress.last = lost.error
            except TimeoutError:
                raise self._out_of_time(link, progress, message_id, timeout,
                                        replies=replies) from None
            failures += 1
            delay = next(delays)
            _log_retry(progress.last, delay, message_id, first=failures == 1)
            if not await _pause(delay, deadline):
                raise self._out_of_time(None, progress, message_id, timeout,
                                        replies=replies) from None

    def _out_of_time(self, link: Link | None, progress: _Progress, message_id: str,
                     timeout: float, *, replies: bool) -> ThelcaClientError:
        if link is not None and link.lost is None and progress.sent:
            if replies:  # the broker took the command; no reply came
                return ReplyTimeout(message_id, timeout)
            reason = f"the broker at {self.hosts()} did not confirm it within {timeout:g} s"
            return ConnectionFailed(reason, message_id=message_id, sent=True)
        if isinstance(progress.last, Nacked):
            return PublishFailed(progress.last.reason, message_id=message_id)
        error = progress.last or TimeoutError("no answer in time")
        return unreachable(self.hosts(), error, timeout, message_id, sent=progress.sent)

    # ------------------------------------------------------------ connecting

    async def ready(self, message_id: str | None) -> Link:
        """The usable link; the calls that need a new one share one attempt to connect.

        Raises Lost when that attempt fails, AccessRefused when the login was refused.
        """
        if self._closed:
            raise ThelcaClientError("the client is closed")
        link = self._link
        if link is not None and link.usable:
            return link
        if link is not None:
            self._link = None
            link.abort()
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            self._connecting.add_done_callback(self._connected)
        try:
            return await asyncio.shield(self._connecting)
        except Refused as refused:
            raise access_refused(refused.parameters, refused.error, message_id) from None

    def _connected(self, task: asyncio.Task[Link]) -> None:
        self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return
        link = task.result()
        if self._closed:
            link.abort()
        else:
            self._link = link

    async def _connect(self) -> Link:
        """The first broker of the list that answers, each given pika's own timeouts."""
        errors: list[BaseException] = []
        refused: Refused | None = None
        for parameters in self.parameters:
            try:
                return await Link.open(parameters)
            except Refused as error:
                refused = error
                errors.append(error.error)
            except Lost as lost:
                errors.append(lost.error)
            log.debug("no broker at %s:%s (%s)", parameters.host, parameters.port,
                      describe(errors[-1]) if isinstance(errors[-1], Exception) else "?")
        if refused is not None:
            raise refused
        raise Lost(errors[-1])


async def _pause(delay: float, deadline: float) -> bool:
    """Sleep the delay, cut at the deadline; False when no time is left."""
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        return False
    await asyncio.sleep(min(delay, remaining))
    return True


def _log_retry(error: BaseException | None, delay: float, message_id: str, *,
               first: bool) -> None:
    # One warning per outage is enough: the later lines only repeat it.
    log.log(
        logging.WARNING if first else logging.DEBUG,
        "no connection to the broker (%s); trying again in %.2f s (message %s)",
        describe(error) if isinstance(error, Exception) else "lost", delay, message_id,
    )
