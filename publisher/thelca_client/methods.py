"""The command methods of both clients, written once: signatures, docstrings, bodies, replies.

Client (blocking) and AsyncClient (asyncio) differ only in how a command
travels. Each gives `_call` (send a body, read its reply as a typed reply) and
`_fire` (publish a body without reply_to, return its message_id); a method
here builds the body and names the typed reply. Client's hooks return the
result; AsyncClient's are coroutines, so its methods return one to await. A new
command is one method here (and its body in thelca_client.commands).

Python's types cannot say "R, or a coroutine of R, as the subclass chooses"
(there are no higher-kinded types), so each client names what its methods
return as this class's six parameters, and each method casts its hook's
result to its own. A body is handed over unbuilt (a partial): AsyncClient builds
it when the call is awaited, as it did when each of its methods was its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Final, Generic, TypeVar, cast

from thelca_client.broker import DEFAULT_CONNECTION_NAME, connection_parameters
from thelca_client.commands import (
    Outgoing,
    create_body,
    create_link_body,
    delete_link_body,
    link_end,
    outgoing,
    read_body,
    read_link_body,
    search_items_body,
    search_links_body,
    update_body,
    update_link_body,
)
from thelca_client.contract import DEFAULT_AMQP_URL, DEFAULT_PREFIX, SEARCH_LIMIT, Names, Reply
from thelca_client.replies import item_page, item_reply, link_page, link_reply
from thelca_client.tls import TlsFiles

DEFAULT_TIMEOUT: Final = 10.0

ItemT = TypeVar("ItemT")  # what create, read and update return: an ItemReply, or a coroutine of one
LinkT = TypeVar("LinkT")
ItemPageT = TypeVar("ItemPageT")
LinkPageT = TypeVar("LinkPageT")
ReplyT = TypeVar("ReplyT")  # what send returns: a Reply, or a coroutine of one
IdT = TypeVar("IdT")  # what publish and create_async return: a message_id, or a coroutine of one

Body = Callable[[], bytes]  # a command's body, built when the call starts
Typed = Callable[[Reply, str], Any]  # reads a 200 reply as the command's typed reply


class ClientMethods(Generic[ItemT, LinkT, ItemPageT, LinkPageT, ReplyT, IdT]):
    """What Client and AsyncClient share: their settings, and every command method."""

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
        self._open()

    def __repr__(self) -> str:
        hosts, prefix, name = self._hosts(), self.names.prefix, type(self).__name__
        return f"{name}(hosts={hosts!r}, prefix={prefix!r}, timeout={self.timeout!r})"

    # ------------------------------------------------------------ what each transport gives

    def _open(self) -> None:
        """Make the transport (it connects on the first call, not here)."""
        raise NotImplementedError

    def _hosts(self) -> str:
        raise NotImplementedError

    def _call(self, body: Body, typed: Typed, token: str | None, message_id: str | None,
              timeout: float | None, *, raise_for_status: bool = True) -> Any:
        """Send the command and read its reply with `typed`; raise for a status but 200
        (unless raise_for_status is false)."""
        raise NotImplementedError

    def _fire(self, body: Body, token: str | None, message_id: str | None,
              timeout: float | None) -> Any:
        """Publish the command without reply_to; its message_id once the broker has it."""
        raise NotImplementedError

    # ------------------------------------------------------------ any command

    def send(
        self,
        command_body: bytes,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
        raise_for_status: bool = True,
    ) -> ReplyT:
        """Publish any body as a command and wait for its reply (AsyncClient: await it).

        Without a token here or on the client, no Authorization header is sent.
        Raises the CommandFailed subclass of the status unless raise_for_status is false.
        After a connection loss the command is sent again with the same message_id
        and a new correlation_id; all of it within `timeout` (default: the client's).
        """
        return cast(ReplyT, self._call(lambda: command_body, _as_is, token, message_id, timeout,
                                       raise_for_status=raise_for_status))

    def publish(
        self,
        command_body: bytes,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> IdT:
        """Publish a command without reply_to, so no reply is sent; return its message_id.

        It returns once the broker confirmed the command (AsyncClient: many may wait
        at once). After a connection loss the command is published again with the same
        message_id, for up to `timeout` seconds (default: the client's), and then
        ConnectionFailed is raised.
        """
        return cast(IdT, self._fire(lambda: command_body, token, message_id, timeout))

    # ------------------------------------------------------------ items

    def create(
        self,
        properties: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> ItemT:
        """A new item with these properties; its version is 1."""
        body = partial(create_body, properties)
        return cast(ItemT, self._call(body, item_reply, token, message_id, timeout))

    def read(
        self,
        id: str,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> ItemT:
        """The item with this id, and its version."""
        body = partial(read_body, id)
        return cast(ItemT, self._call(body, item_reply, token, message_id, timeout))

    def update(
        self,
        id: str,
        item: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> ItemT:
        """Store `item` (the whole item, as read, changed); with `expected_version`, only
        if the item is still at that version (else Conflict)."""
        body = partial(update_body, id, item, expected_version)
        return cast(ItemT, self._call(body, item_reply, token, message_id, timeout))

    def create_async(
        self,
        properties: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> IdT:
        """Create without waiting for the reply; return the message_id once the broker has it."""
        body = partial(create_body, properties)
        return cast(IdT, self._fire(body, token, message_id, timeout))

    # ------------------------------------------------------------ links

    def create_link(
        self,
        source: str,
        target: str,
        properties: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> LinkT:
        """A new link from the item `source` to the item `target`; its version is 1."""
        body = partial(create_link_body, source, target, properties)
        return cast(LinkT, self._call(body, link_reply, token, message_id, timeout))

    def read_link(
        self,
        id: str,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> LinkT:
        """The link with this id, and its version."""
        body = partial(read_link_body, id)
        return cast(LinkT, self._call(body, link_reply, token, message_id, timeout))

    def update_link(
        self,
        id: str,
        link: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> LinkT:
        """Store `link` (the whole link, as read, changed: source, target, properties)."""
        body = partial(update_link_body, id, link, expected_version)
        return cast(LinkT, self._call(body, link_reply, token, message_id, timeout))

    def delete_link(
        self,
        id: str,
        *,
        expected_version: int | None = None,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> LinkT:
        """Delete the link; the reply holds it and its version as they were."""
        body = partial(delete_link_body, id, expected_version)
        return cast(LinkT, self._call(body, link_reply, token, message_id, timeout))

    # ------------------------------------------------------------ search

    def search_items(
        self,
        where: Mapping[str, Any] | None = None,
        *,
        limit: int = SEARCH_LIMIT,
        after: str | None = None,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> ItemPageT:
        """The items whose properties hold every key of `where` with an equal value, in
        creation order: at most `limit`, after the item `after`; pass the page's `next` as
        `after` for the next page."""
        body = partial(search_items_body, where, limit=limit, after=after)
        return cast(ItemPageT, self._call(body, item_page, token, message_id, timeout))

    def search_links(
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
    ) -> LinkPageT:
        """The links from the item `source`, to the item `target`, or with `either` end
        (give exactly one, else ValueError), in creation order, paged as search_items is."""

        def body() -> bytes:
            end, item_id = link_end(source, target, either)
            return search_links_body(end, item_id, limit=limit, after=after)

        return cast(LinkPageT, self._call(body, link_page, token, message_id, timeout))

    # ------------------------------------------------------------ defaults

    def _outgoing(self, body: bytes, token: str | None, message_id: str | None) -> Outgoing:
        return outgoing(body, token=self._token if token is None else token,
                        message_id=message_id)

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout


def _as_is(reply: Reply, message_id: str) -> Reply:
    """send's typed reply: the Reply itself, whatever its status."""
    return reply
