"""One connection of the asyncio client, and what waits on it: confirms and replies by id.

A Link is one pika AsyncioConnection, its commands channel under confirms and a
consumer on direct reply-to. A publish's future is settled by its confirm (by
delivery tag), a call's by its reply (by correlation_id). When the connection or
channel goes, each such future fails with Lost, and the Link is never revived:
thelca_client.asyncio_connection makes a new one and runs the calls again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel
from pika.frame import Method
from pika.spec import Basic, BasicProperties

from thelca_client.broker import (
    Nacked,
    basic_properties,
    describe,
    is_connection_loss,
    login_refused,
    refusal,
)
from thelca_client.commands import Outgoing
from thelca_client.contract import DIRECT_REPLY_TO
from thelca_client.errors import PublishFailed, ThelcaClientError

log = logging.getLogger(__name__)

T = TypeVar("T")
CLOSE_WAIT = 5.0  # seconds close() waits for the broker to confirm the close


class Lost(Exception):
    """The connection or its channel went away under a call: try again on a new one."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(describe(error) if isinstance(error, Exception) else repr(error))
        self.error = error


class Refused(Exception):
    """A broker refused the login: the whole connect gives up, whatever the other URLs say."""

    def __init__(self, parameters: pika.URLParameters, error: BaseException) -> None:
        super().__init__("login refused")
        self.parameters = parameters
        self.error = error


def settle(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)


def fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        # Mark it retrieved: its caller may be gone (timed out, or failed on another
        # future first), and asyncio would otherwise log it as never retrieved.
        future.exception()


@dataclass
class _Publish:
    message_id: str
    queue: str
    confirmed: asyncio.Future[None]
    returned: bool = False


class Link:
    """One connection and its commands channel: usable until lost, never revived."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lost: BaseException | None = None
        self.connection: AsyncioConnection | None = None
        self.channel: Channel | None = None
        self._steps: set[asyncio.Future[Any]] = set()  # handshakes waiting for the broker
        self._next_tag = 1
        self._unconfirmed: dict[int, _Publish] = {}
        self._replies: dict[str, asyncio.Future[bytes]] = {}
        self._on_lost: list[Callable[[BaseException], None]] = []
        self._closed = loop.create_future()

    @property
    def usable(self) -> bool:
        return (self.lost is None and self.connection is not None and self.connection.is_open
                and self.channel is not None and self.channel.is_open)

    # ------------------------------------------------------------ opening

    @classmethod
    async def open(cls, parameters: pika.URLParameters) -> Link:
        """A connection with its commands channel ready: confirms on, direct reply-to consumed."""
        link = cls(asyncio.get_running_loop())
        try:
            await link._open_connection(parameters)
            link.channel = await link._open_channel()
            await link.step(lambda done: link._commands().confirm_delivery(
                link._on_confirm, callback=done))
            link._commands().add_on_return_callback(link._on_return)
            # Direct reply-to only delivers to a consumer that exists, on the publishing
            # channel, before the command is published.
            await link.step(lambda done: link._commands().basic_consume(
                DIRECT_REPLY_TO, link._on_reply, auto_ack=True, callback=done))
        except BaseException:
            link.abort()
            raise
        return link

    async def _open_connection(self, parameters: pika.URLParameters) -> None:
        opened: asyncio.Future[None] = self.loop.create_future()
        self._steps.add(opened)

        def on_open(connection: AsyncioConnection) -> None:
            settle(opened, None)

        def on_open_error(connection: AsyncioConnection, error: BaseException) -> None:
            if login_refused(error):
                fail(opened, Refused(parameters, error))
            else:
                fail(opened, Lost(error))

        self.connection = AsyncioConnection(
            parameters, on_open_callback=on_open, on_open_error_callback=on_open_error,
            on_close_callback=self._on_connection_closed, custom_ioloop=self.loop)
        try:
            await opened
        finally:
            self._steps.discard(opened)

    async def _open_channel(self) -> Channel:
        """A new channel on this connection; the link is lost when the broker closes it."""
        assert self.connection is not None
        connection = self.connection
        channel: Channel = await self.step(
            lambda done: connection.channel(on_open_callback=done))
        channel.add_on_close_callback(self._on_channel_closed)
        return channel

    async def step(self, start: Callable[[Callable[[Any], None]], object]) -> Any:
        """Start a handshake with the callback it calls when done; wait for it or the loss."""
        if self.lost is not None:
            raise Lost(self.lost)
        future: asyncio.Future[Any] = self.loop.create_future()
        self._steps.add(future)
        try:
            start(lambda result: settle(future, result))
        except (pika.exceptions.AMQPError, OSError) as error:
            fail(future, Lost(error))
        except Lost as lost:
            fail(future, lost)
        try:
            return await future
        finally:
            self._steps.discard(future)

    def _commands(self) -> Channel:
        if self.channel is None or self.lost is not None:
            raise Lost(self.lost or pika.exceptions.ChannelWrongStateError("no channel"))
        return self.channel

    # ------------------------------------------------------------ publishing

    def publish(
        self, message: Outgoing, queue: str, correlation_id: str | None,
        reply_to: str = DIRECT_REPLY_TO,
    ) -> asyncio.Future[None]:
        """Publish now; the future settles when the broker confirms (or refuses) it."""
        channel = self._commands()
        properties = basic_properties(message, correlation_id, reply_to=reply_to)
        try:
            channel.basic_publish("", queue, message.body, properties, mandatory=True)
        except (pika.exceptions.AMQPError, OSError) as error:
            raise Lost(error) from None
        confirmed: asyncio.Future[None] = self.loop.create_future()
        self._unconfirmed[self._next_tag] = _Publish(message.message_id, queue, confirmed)
        self._next_tag += 1
        return confirmed

    def expect(self, correlation_id: str) -> asyncio.Future[bytes]:
        """The future the reply with this correlation_id will settle."""
        if self.lost is not None:
            raise Lost(self.lost)
        future: asyncio.Future[bytes] = self.loop.create_future()
        self._replies[correlation_id] = future
        return future

    def forget(self, correlation_id: str) -> None:
        self._replies.pop(correlation_id, None)

    def _on_confirm(self, frame: Method[Basic.Ack | Basic.Nack]) -> None:
        method = frame.method
        refused = isinstance(method, Basic.Nack)
        settled = []
        if not method.multiple:
            publish = self._unconfirmed.pop(method.delivery_tag, None)
            settled = [publish] if publish is not None else []
        while method.multiple and self._unconfirmed:
            tag = next(iter(self._unconfirmed))  # the oldest: tags grow in publish order
            if tag > method.delivery_tag:
                break
            settled.append(self._unconfirmed.pop(tag))
        for publish in settled:
            _confirm(publish, refused)
        if refused and settled:  # this channel may refuse all that follows: a new link
            self.lose(Nacked(settled[0].queue))
            self.abort()

    def _on_return(
        self, channel: Channel, method: Basic.Return, properties: BasicProperties, body: bytes
    ) -> None:
        # The broker returns an unroutable message just before it confirms it, in
        # publish order, so the oldest unconfirmed publish of that message_id is the one.
        for publish in self._unconfirmed.values():
            if publish.message_id == properties.message_id and not publish.returned:
                publish.returned = True
                return

    def _on_reply(
        self, channel: Channel, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        future = self._replies.pop(str(properties.correlation_id), None)
        if future is None:
            # A late reply to a call that already timed out: its caller is gone.
            log.debug("dropped a reply nobody waits for (correlation_id %s)",
                      properties.correlation_id)
            return
        settle(future, body)

    # ------------------------------------------------------------ losing it

    def when_lost(self, callback: Callable[[BaseException], None]) -> None:
        """Call back once when this link is lost (at once if it already is)."""
        if self.lost is not None:
            callback(self.lost)
        else:
            self._on_lost.append(callback)

    def _on_connection_closed(self, connection: AsyncioConnection, reason: BaseException) -> None:
        settle(self._closed, None)
        self.lose(reason)

    def _on_channel_closed(self, channel: Channel, reason: Exception) -> None:
        if self.lost is not None:
            return
        if channel is self.channel and not is_connection_loss(reason):
            # The broker refused a publish (no permission, say): every publish not yet
            # confirmed on this channel is refused alike; calls waiting for a reply try again.
            for publish in self._unconfirmed.values():
                fail(publish.confirmed, refusal(reason, publish.message_id))
            self._unconfirmed.clear()
        self.lose(reason)
        self.abort()

    def lose(self, reason: BaseException) -> None:
        """Fail everything that waits on this link with Lost, once."""
        if self.lost is not None:
            return
        self.lost = reason
        lost = Lost(reason)
        waiting = [*self._steps, *(p.confirmed for p in self._unconfirmed.values()),
                   *self._replies.values()]
        self._steps.clear()
        self._unconfirmed.clear()
        self._replies.clear()
        for future in waiting:
            fail(future, lost)
        callbacks, self._on_lost = self._on_lost, []
        for callback in callbacks:
            callback(reason)

    def abort(self) -> None:
        """Close the connection without waiting; it may be half open or already gone."""
        connection = self.connection
        if connection is not None and not (connection.is_closed or connection.is_closing):
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                log.debug("the connection was already going while closing it")

    async def close(self) -> None:
        """Close the connection and wait a little for the broker to agree."""
        self.lose(ThelcaClientError("the client is closed"))
        self.abort()
        if self.connection is not None and not self._closed.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_WAIT)
            except TimeoutError:
                log.debug("the broker did not confirm the close in time")


def _confirm(publish: _Publish, refused: bool) -> None:
    if refused:
        fail(publish.confirmed, Lost(Nacked(publish.queue)))
    elif publish.returned:
        reason = (f"queue {publish.queue!r} does not exist: is a thelca worker running with "
                  "the same prefix?")
        fail(publish.confirmed, PublishFailed(reason, message_id=publish.message_id))
    else:
        settle(publish.confirmed, None)
