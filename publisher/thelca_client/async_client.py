"""An asyncio thelca client: a coroutine per command, any number in flight, and subscriptions.

It takes the same arguments as the blocking Client and speaks the same way: a
fresh message_id per command unless one is given, `mandatory` publishes under
publisher confirms, replies over direct reply-to, the same message_id sent
again after a lost connection, and the same typed errors. What differs is
that nothing waits for anything else: any number of tasks may call one
AsyncClient at once, their publishes go out back to back, and each call
awaits only its own confirm and reply (thelca_client.asyncio_connection).

The command methods are thelca_client.methods' (shared with Client): each
returns a coroutine here, to await. The bodies and replies are
thelca_client.commands' and thelca_client.replies', which know no transport.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from thelca_client.asyncio_connection import AsyncConnection
from thelca_client.commands import reply_from
from thelca_client.contract import Reply
from thelca_client.methods import Body, ClientMethods
from thelca_client.replies import ItemPage, ItemReply, LinkPage, LinkReply
from thelca_client.subscription import Subscription

R = TypeVar("R")
Co = Coroutine[Any, Any, R]  # what a command method returns here: a coroutine to await


class AsyncClient(ClientMethods[Co[ItemReply], Co[LinkReply], Co[ItemPage], Co[LinkPage],
                                Co[Reply], Co[str]]):
    """Sends thelca commands from asyncio code, many at once, and subscribes to its events.

    Close it, or use `async with`. It connects on its first call, not here;
    every call must come from the same event loop. `url` may be a
    comma-separated list, tried in order on every connect. `timeout` bounds
    every call, (re)connecting included. `connection_name` is what the broker
    shows for the connection; `tls` gives amqps:// URLs a CA file and a client
    certificate. A TLS file that cannot be loaded raises TlsFileError here.
    """

    def _open(self) -> None:
        self._connection = AsyncConnection(self._parameters, queue=self.names.commands)
        self._subscriptions: list[Subscription] = []

    def _hosts(self) -> str:
        return self._connection.hosts()

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

    # ------------------------------------------------------------ the transport

    async def _call(self, body: Body, typed: Callable[[Reply, str], R], token: str | None,
                    message_id: str | None, timeout: float | None, *,
                    raise_for_status: bool = True) -> R:
        message = self._outgoing(body(), token, message_id)
        reply_body = await self._connection.call(message, timeout=self._timeout(timeout))
        reply = reply_from(reply_body, message.message_id, raise_for_status=raise_for_status)
        return typed(reply, message.message_id)

    async def _fire(self, body: Body, token: str | None, message_id: str | None,
                    timeout: float | None) -> str:
        message = self._outgoing(body(), token, message_id)
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
