"""A blocking thelca client: commands that wait for their reply, and fire-and-forget ones.

One Client holds one pika BlockingConnection with one channel, so like that
connection it belongs to the thread that uses it. Every command goes to the
default exchange with `mandatory` under publisher confirms, so a missing
commands queue is an error instead of a silent loss. Replies come back over
direct reply-to on the same channel.

Connection loss: when the connection drops (or the broker restarts) before a
command is confirmed, or before its reply came, the client reconnects, trying
the URLs of its comma-separated list in order, and publishes the command again
with the same message_id. That is safe because thelca applies a message_id once
and answers a repeat with the reply it gave the first time. It keeps trying,
with a backoff of 0.1 s doubling to 2 s (jittered), until the call's timeout
runs out (the call's own `timeout`, by default the client's), and then raises
ConnectionFailed, or ReplyTimeout when the broker was reachable but no reply
came. The first call connects the same way. No pika exception escapes a public
method.
"""

from __future__ import annotations

import copy
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils.connection_workflow import AMQPConnectorException
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
from thelca_client.errors import (
    ConnectionFailed,
    PublishFailed,
    ReplyTimeout,
    ThelcaClientError,
    error_for,
)
from thelca_client.tls import TlsFiles, apply_tls

log = logging.getLogger(__name__)

PERSISTENT: Final = 2
DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_CONNECTION_NAME: Final = "thelca-client"
FIRST_DELAY: Final = 0.1
LONGEST_DELAY: Final = 2.0
# Channel-level refusals (AMQP soft errors: content too large, no consumers, access
# refused, not found, resource locked, precondition failed). The broker answered and
# said no, so the same publish on a new connection would be refused again.
REFUSAL_CODES: Final = frozenset({311, 313, 403, 404, 405, 406})

T = TypeVar("T")


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
        self._parameters = connection_parameters(
            url, connection_name=connection_name or DEFAULT_CONNECTION_NAME, tls=tls
        )
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._closed = False
        self._awaiting: str | None = None
        self._reply: bytes | None = None

    def __repr__(self) -> str:
        hosts, prefix = self._hosts(), self.names.prefix
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
        After a connection loss the command is sent again with the same message_id
        and a new correlation_id; all of it within `timeout` (default: the client's).
        """
        message_id = _new_id() if message_id is None else message_id
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout

        def attempt(channel: BlockingChannel) -> bytes:
            properties = self._properties(token, message_id, correlation_id=_new_id())
            return self._call(channel, command_body, properties, deadline, timeout)

        body = self._retrying(attempt, message_id=message_id, deadline=deadline, timeout=timeout)
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
        timeout: float | None = None,
    ) -> str:
        body = _create_body(properties)
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
        message_id = _new_id() if message_id is None else message_id
        properties = self._properties(token, message_id)
        timeout = self.timeout if timeout is None else timeout
        self._retrying(
            lambda channel: self._publish(channel, command_body, properties),
            message_id=message_id,
            deadline=time.monotonic() + timeout,
            timeout=timeout,
        )
        return message_id

    # ------------------------------------------------------------ one attempt

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

    def _call(
        self,
        channel: BlockingChannel,
        body: bytes,
        properties: BasicProperties,
        deadline: float,
        timeout: float,
    ) -> bytes:
        self._awaiting, self._reply = properties.correlation_id, None
        try:
            self._publish(channel, body, properties)
            return self._wait(channel, str(properties.message_id), deadline, timeout)
        finally:
            self._awaiting = None

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

    def _wait(
        self, channel: BlockingChannel, message_id: str, deadline: float, timeout: float
    ) -> bytes:
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

    # ------------------------------------------------------------ connection loss

    def _retrying(
        self,
        attempt: Callable[[BlockingChannel], T],
        *,
        message_id: str,
        deadline: float,
        timeout: float,
    ) -> T:
        """attempt's result, running it again on a new connection after each connection loss."""
        delays = _backoff()
        failures = 0
        while True:
            try:
                return attempt(self._ready(deadline))
            except (pika.exceptions.AMQPError, OSError) as error:
                if not _is_connection_loss(error):
                    raise _refusal(error, message_id) from None
                self._drop_connection()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._unreachable(error, message_id, timeout) from None
                delay = min(next(delays), remaining)
                failures += 1
                _log_retry(error, delay, message_id, first=failures == 1)
            time.sleep(delay)

    def _ready(self, deadline: float) -> BlockingChannel:
        """The open channel, reconnecting first when the broker dropped the connection."""
        if self._closed:
            raise ThelcaClientError("the client is closed")
        connection = self._connection
        if connection is None or not _responds(connection):
            self._drop_connection()
            connection = self._connection = self._connect(deadline)
        if self._channel is None or not self._channel.is_open:
            self._channel = self._open_channel(connection)
        return self._channel

    def _connect(self, deadline: float) -> pika.BlockingConnection:
        """The first broker of the list that answers, each given what is left of the time."""
        errors: list[Exception] = []
        for parameters in self._parameters:
            try:
                return pika.BlockingConnection(_bounded(parameters, deadline))
            # pika lets some socket errors through raw, a failed DNS lookup for one, and
            # its own workflow errors, such as a handshake that timed out (a peer that
            # accepts the connection but never speaks AMQP, or drops a TLS handshake).
            except (pika.exceptions.AMQPConnectionError, AMQPConnectorException,
                    OSError) as error:
                log.debug(
                    "no broker at %s:%s (%s)", parameters.host, parameters.port, _describe(error)
                )
                lost = isinstance(error, AMQPConnectorException)
                errors.append(pika.exceptions.AMQPConnectionError(_describe(error))
                              if lost else error)
            if time.monotonic() >= deadline:
                break
        raise errors[-1]

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
            except (pika.exceptions.AMQPError, OSError):
                log.debug("the connection was already gone while closing it")

    def _unreachable(self, error: Exception, message_id: str, timeout: float) -> ConnectionFailed:
        reason = (
            f"no broker answered within {timeout:g} s (tried {self._hosts()}); "
            f"last error: {_describe(error)}"
        )
        return ConnectionFailed(reason, message_id=message_id)

    def _hosts(self) -> str:
        return ",".join(f"{p.host}:{p.port}" for p in self._parameters)


def connection_parameters(
    url: str, *, connection_name: str = DEFAULT_CONNECTION_NAME, tls: TlsFiles | None = None
) -> list[pika.URLParameters]:
    """One entry per URL of a comma-separated list, each tried in turn."""
    urls = [part.strip() for part in url.split(",") if part.strip()]
    if not urls:
        raise ValueError("no AMQP URL given")
    return [_parameters(part, connection_name, tls) for part in urls]


def _parameters(url: str, connection_name: str, tls: TlsFiles | None) -> pika.URLParameters:
    parameters = pika.URLParameters(url)
    apply_tls(parameters, url, tls)
    # The client retries by itself, within its timeout; pika's own retries would not be.
    parameters.connection_attempts = 1
    parameters.client_properties = {
        **(parameters.client_properties or {}),
        "connection_name": connection_name,
    }
    return parameters


def _bounded(parameters: pika.URLParameters, deadline: float) -> pika.URLParameters:
    """A copy whose connect and handshake timeouts end no later than the deadline."""
    left = max(deadline - time.monotonic(), 0.01)
    bounded = copy.copy(parameters)
    bounded.socket_timeout = min(parameters.socket_timeout or left, left)
    bounded.stack_timeout = min(parameters.stack_timeout or left, left)
    return bounded


def _backoff() -> Iterator[float]:
    """0.1 s, 0.2 s, 0.4 s ... up to 2 s, each shortened by up to half at random.

    The jitter keeps the clients that one broker restart disconnected from all
    knocking again at the same instant.
    """
    delay = FIRST_DELAY
    while True:
        yield delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
        delay = min(delay * 2, LONGEST_DELAY)


def _log_retry(error: Exception, delay: float, message_id: str, *, first: bool) -> None:
    # One warning per outage is enough: the later lines only repeat it.
    log.log(
        logging.WARNING if first else logging.DEBUG,
        "no connection to the broker (%s); trying again in %.2f s (message %s)",
        _describe(error),
        delay,
        message_id,
    )


def _is_connection_loss(error: Exception) -> bool:
    if isinstance(error, pika.exceptions.ChannelClosedByBroker):
        return error.reply_code not in REFUSAL_CODES
    lost = (
        OSError,
        pika.exceptions.AMQPConnectionError,
        pika.exceptions.ChannelClosed,
        pika.exceptions.ChannelWrongStateError,
    )
    return isinstance(error, lost)


def _refusal(error: Exception, message_id: str) -> PublishFailed:
    # Only the broker's own reply text, never str() of other pika errors: some of
    # them carry the message, and so its Authorization header.
    if isinstance(error, pika.exceptions.ChannelClosedByBroker):
        reason = f"the broker closed the channel: {error.reply_code} {error.reply_text}"
    else:
        reason = f"pika raised {type(error).__name__}"
    return PublishFailed(reason, message_id=message_id)


def _describe(error: Exception) -> str:
    # Only ever given connection errors: they name sockets and broker reply texts,
    # never a message, so never a token.
    detail = str(error) or "; ".join(repr(arg) for arg in error.args)
    text = f"{type(error).__name__}: {detail}"
    return text if len(text) <= 300 else text[:297] + "..."


def _responds(connection: pika.BlockingConnection) -> bool:
    # A connection the broker closed while we were idle still looks open until
    # pika reads from its socket.
    if not connection.is_open:
        return False
    try:
        connection.process_data_events(time_limit=0)
    except (pika.exceptions.AMQPError, OSError):
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
