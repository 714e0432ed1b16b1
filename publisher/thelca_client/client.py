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

The command methods are thelca_client.methods' (shared with AsyncClient), the
bodies and replies thelca_client.commands'; this module only gives them the
blocking transport.

Pipelining: `send_many`, `create_many` and `publish_many` send many commands
without waiting for each, through a second connection that an event loop in a
thread of the Client's own drives (thelca_client.pipeline), made on the first
such call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from thelca_client.commands import create_body, reply_from
from thelca_client.connection import Connection
from thelca_client.contract import Reply
from thelca_client.errors import ThelcaClientError
from thelca_client.methods import DEFAULT_TIMEOUT, Body, ClientMethods
from thelca_client.pipeline import DEFAULT_WINDOW, Pipeline
from thelca_client.replies import ItemPage, ItemReply, LinkPage, LinkReply, item_reply

__all__ = ["DEFAULT_TIMEOUT", "Client"]  # DEFAULT_TIMEOUT: where it was before methods.py

R = TypeVar("R")


class Client(ClientMethods[ItemReply, LinkReply, ItemPage, LinkPage, Reply, str]):
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

    def _open(self) -> None:
        self._connection = Connection(self._parameters, queue=self.names.commands)
        self._pipeline: Pipeline | None = None

    def _hosts(self) -> str:
        return self._connection.hosts()

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

    # ------------------------------------------------------------ the transport

    def _call(self, body: Body, typed: Callable[[Reply, str], R], token: str | None,
              message_id: str | None, timeout: float | None, *,
              raise_for_status: bool = True) -> R:
        message = self._outgoing(body(), token, message_id)
        reply_body = self._connection.call(message, timeout=self._timeout(timeout))
        reply = reply_from(reply_body, message.message_id, raise_for_status=raise_for_status)
        return typed(reply, message.message_id)

    def _fire(self, body: Body, token: str | None, message_id: str | None,
              timeout: float | None) -> str:
        message = self._outgoing(body(), token, message_id)
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


def _first(errors: list[Exception]) -> Exception:
    """The error to raise for a batch: the first, or a non-client error (a bug) before all."""
    for error in errors:
        if not isinstance(error, ThelcaClientError):
            return error
    return errors[0]
