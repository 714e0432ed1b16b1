"""A blocking thelca client: commands that wait for their reply, and fire-and-forget ones.

One Client holds one pika BlockingConnection with one channel, so like that
connection it belongs to the thread that uses it. Every command goes to the
default exchange with `mandatory` under publisher confirms, so a missing
commands queue is an error instead of a silent loss. Replies come back over
direct reply-to on the same channel.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Self

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from thelca_client.contract import (
    CONTENT_TYPE,
    DEFAULT_AMQP_URL,
    DEFAULT_PREFIX,
    DIRECT_REPLY_TO,
    ContractError,
    Names,
    Reply,
    authorization_headers,
    decode_reply,
    encode_command,
)
from thelca_client.errors import PublishFailed, ReplyTimeout, ThelcaClientError, error_for

log = logging.getLogger(__name__)

PERSISTENT: Final = 2
DEFAULT_TIMEOUT: Final = 10.0


class Client:
    """Sends thelca commands. Use it from one thread only, and close it (or use `with`)."""

    def __init__(
        self,
        url: str = DEFAULT_AMQP_URL,
        *,
        prefix: str = DEFAULT_PREFIX,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.names = Names(prefix)
        self.timeout = timeout
        self._token = token
        self._parameters = connection_parameters(url)
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._closed = False
        self._awaiting: str | None = None
        self._reply: bytes | None = None
        self._ready()

    def __repr__(self) -> str:
        hosts = ",".join(f"{p.host}:{p.port}" for p in self._parameters)
        return f"Client(hosts={hosts!r}, prefix={self.names.prefix!r}, timeout={self.timeout!r})"

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
        self._closed = True
        self._drop_connection()

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
            _create_body(properties), token=token, message_id=message_id, timeout=timeout
        )

    def read(
        self,
        id: str,
        *,
        token: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> Reply:
        body = encode_command("read", id=id)
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
        body = encode_command("update", id=id, item=item, expected_version=expected_version)
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
        """
        message_id = _new_id() if message_id is None else message_id
        correlation_id = _new_id()
        channel = self._ready()
        self._awaiting, self._reply = correlation_id, None
        try:
            properties = self._properties(token, message_id, correlation_id)
            self._publish(channel, command_body, properties)
            body = self._wait(channel, message_id, self.timeout if timeout is None else timeout)
        finally:
            self._awaiting = None
        reply = _decode(body, message_id)
        if raise_for_status and not reply.ok:
            raise error_for(reply, message_id=message_id)
        return reply

    # ------------------------------------------------------------ fire-and-forget

    def create_async(
        self,
        properties: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        message_id: str | None = None,
    ) -> str:
        return self.publish(_create_body(properties), token=token, message_id=message_id)

    def publish(
        self, command_body: bytes, *, token: str | None = None, message_id: str | None = None
    ) -> str:
        """Publish a command without reply_to, so no reply is sent; return its message_id."""
        message_id = _new_id() if message_id is None else message_id
        self._publish(self._ready(), command_body, self._properties(token, message_id))
        return message_id

    # ------------------------------------------------------------ plumbing

    def _properties(
        self, token: str | None, message_id: str, correlation_id: str | None = None
    ) -> BasicProperties:
        token = self._token if token is None else token
        return BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=None if correlation_id is None else DIRECT_REPLY_TO,
            headers=None if token is None else authorization_headers(token),
        )

    def _publish(self, channel: BlockingChannel, body: bytes, properties: BasicProperties) -> None:
        message_id = str(properties.message_id)
        queue = self.names.commands
        try:
            channel.basic_publish("", queue, body, properties, mandatory=True)
        except pika.exceptions.UnroutableError:
            reason = (
                f"queue {queue!r} does not exist: is a thelca worker running with the same prefix?"
            )
            raise PublishFailed(reason, message_id=message_id) from None
        except pika.exceptions.NackError:
            reason = f"the broker refused it (nack); queue {queue!r} may be full"
            raise PublishFailed(reason, message_id=message_id) from None

    def _wait(self, channel: BlockingChannel, message_id: str, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            if self._reply is not None:
                return self._reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplyTimeout(message_id, timeout)
            channel.connection.process_data_events(time_limit=remaining)

    def _on_reply(
        self,
        channel: BlockingChannel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        if properties.correlation_id == self._awaiting:
            self._reply = body
        else:
            # A late reply to a call that already timed out: its caller is gone.
            log.debug(
                "dropped a reply nobody waits for (correlation_id %s)", properties.correlation_id
            )

    def _ready(self) -> BlockingChannel:
        """The open channel, reconnecting first when the broker dropped the connection."""
        if self._closed:
            raise ThelcaClientError("the client is closed")
        connection = self._connection
        if connection is None or not _responds(connection):
            self._drop_connection()
            connection = self._connection = pika.BlockingConnection(self._parameters)
        if self._channel is None or not self._channel.is_open:
            self._channel = self._open_channel(connection)
        return self._channel

    def _open_channel(self, connection: pika.BlockingConnection) -> BlockingChannel:
        channel = connection.channel()
        channel.confirm_delivery()
        # Direct reply-to only delivers to a consumer that exists, on the publishing
        # channel, before the command is published.
        channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
        return channel

    def _drop_connection(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                log.debug("the connection was already gone while closing it")


def connection_parameters(url: str) -> list[pika.URLParameters]:
    """One entry per URL of a comma-separated list; pika tries them in turn."""
    urls = [part.strip() for part in url.split(",") if part.strip()]
    if not urls:
        raise ValueError("no AMQP URL given")
    return [pika.URLParameters(part) for part in urls]


def _responds(connection: pika.BlockingConnection) -> bool:
    # A connection the broker closed while we were idle still looks open until
    # pika reads from its socket.
    if not connection.is_open:
        return False
    try:
        connection.process_data_events(time_limit=0)
    except pika.exceptions.AMQPError:
        return False
    return connection.is_open


def _create_body(properties: Mapping[str, Any] | None) -> bytes:
    return encode_command("create", item={"properties": dict(properties or {})})


def _new_id() -> str:
    return str(uuid.uuid4())


def _decode(body: bytes, message_id: str) -> Reply:
    try:
        return decode_reply(body)
    except ContractError as error:
        raise ThelcaClientError(
            f"the reply to message {message_id} does not follow the contract: {error}"
        ) from error


# ---------------------------------------------------------------- keeping tokens out of logs


class _RedactAuthorization(logging.Filter):
    """Blanks the Authorization header of message properties that pika puts in a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        return True


def _redacted(value: object) -> object:
    if not isinstance(value, BasicProperties) or not value.headers:
        return value
    safe = copy.copy(value)
    safe.headers = {
        key: "<redacted>" if str(key).lower() == "authorization" else header
        for key, header in value.headers.items()
    }
    return safe


def _keep_tokens_out_of_pika_logs() -> None:
    # pika logs the properties of every returned (unroutable) message at WARNING,
    # headers included, which would put the Bearer token in the application's log.
    for name in ("pika.adapters.blocking_connection", "pika.channel"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactAuthorization) for f in logger.filters):
            logger.addFilter(_RedactAuthorization())


_keep_tokens_out_of_pika_logs()
