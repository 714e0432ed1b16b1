"""A blocking thelca client: commands that wait for their reply, and fire-and-forget ones.

One Client holds one Connection (thelca_client.connection): one pika
BlockingConnection with one channel, so like that connection it belongs to the
thread that uses it. Every command goes to the default exchange with
`mandatory` under publisher confirms, so a missing commands queue is an error
instead of a silent loss. Replies come back over direct reply-to on the same
channel.

Connection loss: when the connection drops (or the broker restarts) before a
command is confirmed, or before its reply came, the client reconnects, trying
the URLs of its comma-separated list in order, and publishes the command again
with the same message_id. That is safe because thelca applies a message_id once
and answers a repeat with the reply it gave the first time. It keeps trying,
with a backoff of 0.1 s doubling to 2 s (jittered), until the call's timeout
runs out (the call's own `timeout`, by default the client's), and then raises
ConnectionFailed, or ReplyTimeout when the broker was reachable but no reply
came. The first call connects the same way. A command the broker refuses (a
nack: a full queue, or a quorum queue that lost its leader a moment ago) is
published again the same way on a fresh channel, and raises PublishFailed only
once the timeout has run out. No pika exception escapes a public method.

The commands are built and their replies read by thelca_client.commands, which
knows no transport; this module only puts the two together.

Pipelining: `send_many`, `create_many` and `publish_many` send many commands
without waiting for each, through a second connection that an event loop in a
thread of the Client's own drives (thelca_client.pipeline), made on the first
such call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Self, TypeVar

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
    reply_from,
    search_items_body,
    search_links_body,
    update_body,
    update_link_body,
)
from thelca_client.connection import Connection
from thelca_client.contract import DEFAULT_AMQP_URL, DEFAULT_PREFIX, SEARCH_LIMIT, Names, Reply
from thelca_client.errors import ThelcaClientError
from thelca_client.pipeline import DEFAULT_WINDOW, Pipeline
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
from thelca_client.tls import TlsFiles

DEFAULT_TIMEOUT: Final = 10.0
R = TypeVar("R")


class Client:
    """Sends thelca commands. Use it from one thread only, and close it (or use `with`).

    It connects on its first call, not here, so that it can be made before the
    broker is up. `url` may be a comma-separated list, tried in order on every
    connect. `timeout` bounds every call, (re)connecting included (see the module
    docstring).
    `connection_name` is shown by the broker (management UI, `rabbitmqctl
    list_connections client_properties`), so operators can tell clients apart.
    `tls` gives amqps:// URLs a CA file and a client certificate (TlsFiles); an
    amqps:// URL verifies the broker's certificate and host name with or without it.
    A TLS file that cannot be loaded raises TlsFileError (a ValueError) here.
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
        parameters = connection_parameters(
            url, connection_name=connection_name or DEFAULT_CONNECTION_NAME, tls=tls
        )
        self._connection = Connection(parameters, queue=self.names.commands)
        self._pipeline: Pipeline | None = None

    def __repr__(self) -> str:
        hosts, prefix = self._connection.hosts(), self.names.prefix
        return f"Client(hosts={hosts!r}, prefix={prefix!r}, timeout={self.timeout!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._connection.close()
        if self._pipeline is not None:
            self._pipeline.close()

    # ------------------------------------------------------------ commands with a reply

    def create(
        self,
        properties: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> ItemReply:
        return self._command(create_body(properties), token, message_id, timeout, item_reply)

    def read(
        self,
        id: str,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> ItemReply:
        return self._command(read_body(id), token, message_id, timeout, item_reply)

    def update(
        self,
        id: str,
        item: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> ItemReply:
        return self._command(update_body(id, item, expected_version), token, message_id,
                             timeout, item_reply)

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
    ) -> LinkReply:
        """A new link from the item `source` to the item `target`; its version is 1."""
        body = create_link_body(source, target, properties)
        return self._link(body, token, message_id, timeout)

    def read_link(
        self,
        id: str,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> LinkReply:
        return self._link(read_link_body(id), token, message_id, timeout)

    def update_link(
        self,
        id: str,
        link: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> LinkReply:
        """Store `link` (the whole link, as read, changed: source, target, properties)."""
        body = update_link_body(id, link, expected_version)
        return self._link(body, token, message_id, timeout)

    def delete_link(
        self,
        id: str,
        *,
        expected_version: int | None = None,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> LinkReply:
        """Delete the link; the reply holds it and its version as they were."""
        body = delete_link_body(id, expected_version)
        return self._link(body, token, message_id, timeout)

    def _link(
        self, body: bytes, token: str | None, message_id: str | None, timeout: float | None
    ) -> LinkReply:
        return self._command(body, token, message_id, timeout, link_reply)

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
    ) -> ItemPage:
        """The items whose properties hold every key of `where` with an equal value, in
        creation order: at most `limit`, after the item `after`; pass the page's `next` as
        `after` for the next page."""
        body = search_items_body(where, limit=limit, after=after)
        return self._command(body, token, message_id, timeout, item_page)

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
    ) -> LinkPage:
        """The links from the item `source`, to the item `target`, or with `either` end
        (give exactly one), in creation order, paged as search_items is."""
        end, item_id = link_end(source, target, either)
        body = search_links_body(end, item_id, limit=limit, after=after)
        return self._command(body, token, message_id, timeout, link_page)

    # ------------------------------------------------------------ any command

    def send(
        self,
        command_body: bytes,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
        raise_for_status: bool = True,
    ) -> Reply:
        """Publish any body as a command and wait for its reply.

        Without a token here or on the Client, no Authorization header is sent.
        Raises the CommandFailed subclass of the status unless raise_for_status is false.
        After a connection loss the command is sent again with the same message_id
        and a new correlation_id; all of it within `timeout` (default: the client's).
        """
        message = self._outgoing(command_body, token, message_id)
        body = self._connection.call(message, timeout=self._timeout(timeout))
        return reply_from(body, message.message_id, raise_for_status=raise_for_status)

    def _command(self, command_body: bytes, token: str | None, message_id: str | None,
                 timeout: float | None, typed: Callable[[Reply, str], R]) -> R:
        """Send a command and read its 200 reply as its typed reply; raise for any other."""
        message = self._outgoing(command_body, token, message_id)
        body = self._connection.call(message, timeout=self._timeout(timeout))
        reply = reply_from(body, message.message_id, raise_for_status=True)
        return typed(reply, message.message_id)

    # ------------------------------------------------------------ fire-and-forget

    def create_async(
        self,
        properties: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> str:
        body = create_body(properties)
        return self.publish(body, token=token, message_id=message_id, timeout=timeout)

    def publish(
        self,
        command_body: bytes,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Publish a command without reply_to, so no reply is sent; return its message_id.

        It returns once the broker confirmed the command. After a connection loss the
        command is published again with the same message_id, for up to `timeout`
        seconds (default: the client's), and then ConnectionFailed is raised.
        """
        message = self._outgoing(command_body, token, message_id)
        self._connection.publish(message, timeout=self._timeout(timeout))
        return message.message_id

    # ------------------------------------------------------------ pipelined

    def send_many(
        self,
        command_bodies: Iterable[bytes],
        *,
        token: str | None = None,
        timeout: float | None = None,
        raise_for_status: bool = True,
        window: int = DEFAULT_WINDOW,
    ) -> list[Reply]:
        """Publish many commands, up to `window` at a time without waiting for each; their
        replies, in order.

        `timeout` bounds each command, from when it is sent. When one fails (or, with
        raise_for_status, is refused) the first such error is raised, once every
        command has been answered; its message_id says which.
        """
        return self._many(command_bodies, token, timeout, window,
                          lambda reply, _: reply, raise_for_status=raise_for_status)

    def create_many(
        self,
        properties: Iterable[Mapping[str, Any] | None],
        *,
        token: str | None = None,
        timeout: float | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> list[ItemReply]:
        """Create an item for each mapping of properties, pipelined as send_many; in order."""
        bodies = [create_body(each) for each in properties]
        return self._many(bodies, token, timeout, window, item_reply, raise_for_status=True)

    def publish_many(
        self,
        command_bodies: Iterable[bytes],
        *,
        token: str | None = None,
        timeout: float | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> list[str]:
        """Fire-and-forget many commands; their message_ids, once the broker confirmed all.

        The confirms are collected together, not waited for one by one. When a
        publish fails, the first error is raised once every other one is settled.
        """
        messages = [self._outgoing(body, token, None) for body in command_bodies]
        outcomes = self._pipelined().publish_many(messages, timeout=self._timeout(timeout),
                                                  window=window)
        errors = [outcome for outcome in outcomes if outcome is not None]
        if errors:
            raise _first(errors)
        return [message.message_id for message in messages]

    def _many(
        self,
        command_bodies: Iterable[bytes],
        token: str | None,
        timeout: float | None,
        window: int,
        typed: Callable[[Reply, str], R],
        *,
        raise_for_status: bool,
    ) -> list[R]:
        messages = [self._outgoing(body, token, None) for body in command_bodies]
        outcomes = self._pipelined().call_many(messages, timeout=self._timeout(timeout),
                                               window=window)
        results: list[R] = []
        errors: list[Exception] = []
        for message, outcome in zip(messages, outcomes, strict=True):
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                reply = reply_from(outcome, message.message_id,
                                   raise_for_status=raise_for_status)
                results.append(typed(reply, message.message_id))
            except ThelcaClientError as error:
                errors.append(error)
        if errors:
            raise _first(errors)
        return results

    def _pipelined(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = Pipeline(self._connection.parameters, queue=self.names.commands)
        return self._pipeline

    # ------------------------------------------------------------ defaults

    def _outgoing(self, body: bytes, token: str | None, message_id: str | None) -> Outgoing:
        token = self._token if token is None else token
        return outgoing(body, token=token, message_id=message_id)

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout


def _first(errors: list[Exception]) -> Exception:
    """The error to raise for a batch: the first, or a non-client error (a bug) before all."""
    for error in errors:
        if not isinstance(error, ThelcaClientError):
            return error
    return errors[0]
