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
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Self

from thelca_client.broker import DEFAULT_CONNECTION_NAME, connection_parameters
from thelca_client.commands import (
    Outgoing,
    create_body,
    outgoing,
    read_body,
    reply_from,
    update_body,
)
from thelca_client.connection import Connection
from thelca_client.contract import DEFAULT_AMQP_URL, DEFAULT_PREFIX, Names, Reply
from thelca_client.tls import TlsFiles

DEFAULT_TIMEOUT: Final = 10.0


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

    # ------------------------------------------------------------ commands with a reply

    def create(
        self,
        properties: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> Reply:
        return self.send(
            create_body(properties), token=token, message_id=message_id, timeout=timeout
        )

    def read(
        self,
        id: str,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> Reply:
        body = read_body(id)
        return self.send(body, token=token, message_id=message_id, timeout=timeout)

    def update(
        self,
        id: str,
        item: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> Reply:
        body = update_body(id, item, expected_version)
        return self.send(body, token=token, message_id=message_id, timeout=timeout)

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

    # ------------------------------------------------------------ defaults

    def _outgoing(self, body: bytes, token: str | None, message_id: str | None) -> Outgoing:
        token = self._token if token is None else token
        return outgoing(body, token=token, message_id=message_id)

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout
