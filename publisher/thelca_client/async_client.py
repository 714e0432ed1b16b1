"""An asyncio thelca client: a coroutine per command, any number in flight, and subscriptions.

It takes the same arguments as the blocking Client and speaks the same way: a
fresh message_id per command unless one is given, `mandatory` publishes under
publisher confirms, replies over direct reply-to, the same message_id sent
again after a lost connection, and the same typed errors. What differs is
that nothing waits for anything else: any number of tasks may call one
AsyncClient at once, their publishes go out back to back, and each call
awaits only its own confirm and reply (thelca_client.asyncio_connection).

The commands are built and their replies read by thelca_client.commands and
thelca_client.replies, which know no transport: a new command is one line here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from thelca_client.asyncio_connection import AsyncConnection
from thelca_client.broker import DEFAULT_CONNECTION_NAME, connection_parameters
from thelca_client.client import DEFAULT_TIMEOUT
from thelca_client.commands import (
    Outgoing,
    create_body,
    create_link_body,
    delete_link_body,
    link_end,
    outgoing,
    read_body,
    read_link_body,
    reply_from,
    search_items_body,
    search_links_body,
    update_body,
    update_link_body,
)
from thelca_client.contract import DEFAULT_AMQP_URL, DEFAULT_PREFIX, SEARCH_LIMIT, Names, Reply
from thelca_client.replies import (
    ItemPage,
    ItemReply,
    LinkPage,
    LinkReply,
    item_page,
    item_reply,
    link_page,
    link_reply,
)
from thelca_client.subscription import Subscription
from thelca_client.tls import TlsFiles

R = TypeVar("R")


class AsyncClient:
    """Sends thelca commands from asyncio code, many at once, and subscribes to its events.

    Close it, or use `async with`. It connects on its first call, not here;
    every call must come from the same event loop. `url` may be a
    comma-separated list, tried in order on every connect. `timeout` bounds
    every call, (re)connecting included. `connection_name` is what the broker
    shows for the connection; `tls` gives amqps:// URLs a CA file and a client
    certificate. A TLS file that cannot be loaded raises TlsFileError here.
    """

    def __init__(
        self,
        url: str = DEFAULT_AMQP_URL,
        *,
        prefix: str = DEFAULT_PREFIX,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connection_name: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.names = Names(prefix)
        self.timeout = timeout
        self._token = token
        self._parameters = connection_parameters(
            url, connection_name=connection_name or DEFAULT_CONNECTION_NAME, tls=tls
        )
        self._connection = AsyncConnection(self._parameters, queue=self.names.commands)
        self._subscriptions: list[Subscription] = []

    def __repr__(self) -> str:
        hosts, prefix = self._connection.hosts(), self.names.prefix
        return f"AsyncClient(hosts={hosts!r}, prefix={prefix!r}, timeout={self.timeout!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self, *, timeout: float | None = None) -> None:
        """Connect now rather than on the first call; ConnectionFailed when no broker answers."""
        await self._connection.connect(timeout=self._timeout(timeout))

    async def close(self) -> None:
        """Close the connection and every subscription; calls still waiting fail."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.close()
        await self._connection.close()

    # ------------------------------------------------------------ commands with a reply

    async def create(
        self,
        properties: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> ItemReply:
        return await self._command(create_body(properties), item_reply, token, message_id,
                                   timeout)

    async def read(
        self,
        id: str,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> ItemReply:
        return await self._command(read_body(id), item_reply, token, message_id, timeout)

    async def update(
        self,
        id: str,
        item: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> ItemReply:
        return await self._command(update_body(id, item, expected_version), item_reply, token,
                                   message_id, timeout)

    # ------------------------------------------------------------ links and search

    async def create_link(
        self,
        source: str,
        target: str,
        properties: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> LinkReply:
        return await self._command(create_link_body(source, target, properties), link_reply,
                                   token, message_id, timeout)

    async def read_link(
        self,
        id: str,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> LinkReply:
        return await self._command(read_link_body(id), link_reply, token, message_id, timeout)

    async def update_link(
        self,
        id: str,
        link: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> LinkReply:
        return await self._command(update_link_body(id, link, expected_version), link_reply,
                                   token, message_id, timeout)

    async def delete_link(
        self,
        id: str,
        *,
        expected_version: int | None = None,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> LinkReply:
        return await self._command(delete_link_body(id, expected_version), link_reply, token,
                                   message_id, timeout)

    async def search_items(
        self,
        where: Mapping[str, Any] | None = None,
        *,
        limit: int = SEARCH_LIMIT,
        after: str | None = None,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> ItemPage:
        return await self._command(search_items_body(where, limit=limit, after=after),
                                   item_page, token, message_id, timeout)

    async def search_links(
        self,
        *,
        source: str | None = None,
        target: str | None = None,
        either: str | None = None,
        limit: int = SEARCH_LIMIT,
        after: str | None = None,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> LinkPage:
        end, item_id = link_end(source, target, either)
        return await self._command(search_links_body(end, item_id, limit=limit, after=after),
                                   link_page, token, message_id, timeout)

    async def send(
        self,
        command_body: bytes,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
        raise_for_status: bool = True,
    ) -> Reply:
        """Publish any body as a command and await its reply.

        Raises the CommandFailed subclass of the status unless raise_for_status is false.
        """
        message = self._outgoing(command_body, token, message_id)
        body = await self._connection.call(message, timeout=self._timeout(timeout))
        return reply_from(body, message.message_id, raise_for_status=raise_for_status)

    async def _command(
        self,
        command_body: bytes,
        typed: Callable[[Reply, str], R],
        token: str | None,
        message_id: str | None,
        timeout: float | None,
    ) -> R:
        """Send a command and read its 200 reply as its typed reply; raise for any other."""
        message = self._outgoing(command_body, token, message_id)
        body = await self._connection.call(message, timeout=self._timeout(timeout))
        reply = reply_from(body, message.message_id, raise_for_status=True)
        return typed(reply, message.message_id)

    # ------------------------------------------------------------ fire-and-forget

    async def create_async(
        self,
        properties: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Create without waiting for the reply; return the message_id once the broker has it."""
        return await self.publish(create_body(properties), token=token, message_id=message_id,
                                  timeout=timeout)

    async def publish(
        self,
        command_body: bytes,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Publish a command without reply_to, so no reply is sent; return its message_id.

        It returns once the broker confirmed the command; many may wait at once.
        """
        message = self._outgoing(command_body, token, message_id)
        await self._connection.publish(message, timeout=self._timeout(timeout))
        return message.message_id

    # ------------------------------------------------------------ events

    def subscribe(
        self,
        since: str | datetime | None = None,
        types: Iterable[str] | None = None,
        *,
        token: str | None = None,
    ) -> Subscription:
        """The events since `since` (ISO 8601 with an offset; None: the whole log), then live.

        `types` keeps only those event types (such as "Item created"). Each event id
        comes once; see thelca_client.subscription for how there is no gap. The
        subscription has a connection of its own, made on its first `anext`.
        """
        subscription = Subscription(
            self._parameters, self.names, token=self._token if token is None else token,
            since=since, types=types, timeout=self.timeout)
        self._subscriptions.append(subscription)
        return subscription

    # ------------------------------------------------------------ defaults

    def _outgoing(self, body: bytes, token: str | None, message_id: str | None) -> Outgoing:
        return outgoing(body, token=self._token if token is None else token,
                        message_id=message_id)

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout
