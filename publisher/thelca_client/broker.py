"""What the client's pika transports share, whichever connection style they use.

The parameters of each broker URL, the properties a command is published
with, the backoff between attempts, which pika errors are a lost connection
(try again) and which a refusal (give up), and a log filter that keeps tokens
out of pika's own log lines. The blocking Connection uses all of it; an
asyncio transport on pika would too.
"""

from __future__ import annotations

import copy
import logging
import random
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Final

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import (
    AMQPConnectionWorkflowFailed,
    AMQPConnectorPhaseErrorBase,
    AMQPConnectorStackTimeout,
)
from pika.spec import BasicProperties

from thelca_client.commands import Outgoing
from thelca_client.contract import CONTENT_TYPE, DIRECT_REPLY_TO
from thelca_client.errors import AccessRefused, ConnectionFailed, PublishFailed
from thelca_client.tls import TlsFiles, apply_tls

PERSISTENT: Final = 2
DEFAULT_CONNECTION_NAME: Final = "thelca-client"
FIRST_DELAY: Final = 0.1
LONGEST_DELAY: Final = 2.0
# Channel-level refusals (AMQP soft errors: content too large, no consumers, access
# refused, not found, resource locked, precondition failed). The broker answered and
# said no, so the same publish on a new connection would be refused again.
REFUSAL_CODES: Final = frozenset({311, 313, 403, 404, 405, 406})


# ---------------------------------------------------------------- parameters and properties


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


def renamed(parameters: pika.URLParameters, suffix: str) -> pika.URLParameters:
    """A copy whose connection_name (what the broker shows) ends with suffix."""
    copied = copy.copy(parameters)
    properties = dict(parameters.client_properties or {})
    properties["connection_name"] = f"{properties.get('connection_name', '')}{suffix}"
    copied.client_properties = properties
    return copied


def bounded(parameters: pika.URLParameters, deadline: float) -> pika.URLParameters:
    """A copy whose connect and handshake timeouts end no later than the deadline."""
    left = max(deadline - time.monotonic(), 0.01)
    copied = copy.copy(parameters)
    copied.socket_timeout = min(parameters.socket_timeout or left, left)
    copied.stack_timeout = min(parameters.stack_timeout or left, left)
    return copied


def hosts(parameters: list[pika.URLParameters]) -> str:
    """host:port of each broker, comma-separated, for messages (never the credentials)."""
    return ",".join(f"{p.host}:{p.port}" for p in parameters)


def basic_properties(
    message: Outgoing, correlation_id: str | None = None, *, reply_to: str = DIRECT_REPLY_TO
) -> BasicProperties:
    """A persistent JSON command; with a correlation_id its reply comes to reply_to
    (direct reply-to unless another queue is named)."""
    return BasicProperties(
        content_type=CONTENT_TYPE,
        delivery_mode=PERSISTENT,
        message_id=message.message_id,
        correlation_id=correlation_id,
        reply_to=None if correlation_id is None else reply_to,
        headers=None if message.headers is None else dict(message.headers),
    )


# ---------------------------------------------------------------- retries and errors


def backoff() -> Iterator[float]:
    """0.1 s, 0.2 s, 0.4 s ... up to 2 s, each shortened by up to half at random.

    The jitter keeps the clients that one broker restart disconnected from all
    knocking again at the same instant.
    """
    delay = FIRST_DELAY
    while True:
        yield delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
        delay = min(delay * 2, LONGEST_DELAY)


class Nacked(Exception):
    """The broker refused a publish (a nack): sent again on a fresh channel until the deadline.

    On RabbitMQ 3.10 a channel whose first publish to a quorum queue came while the
    queue's leader was down has every later publish nacked until that node is back,
    while a new channel works within half a second of the election: so a nacked
    channel is never used again, and only a deadline turns a nack into PublishFailed.
    """

    def __init__(self, queue: str) -> None:
        super().__init__(f"nack from {queue!r}")
        self.reason = (f"the broker refused it (nack) until the call's time ran out; queue "
                       f"{queue!r} may be full, or lack a majority of its cluster's nodes")


def is_connection_loss(error: Exception) -> bool:
    """True when a new connection may succeed where this one failed."""
    if isinstance(error, pika.exceptions.ChannelClosedByBroker):
        return error.reply_code not in REFUSAL_CODES
    lost = (
        OSError,
        pika.exceptions.AMQPConnectionError,
        pika.exceptions.ChannelClosed,
        pika.exceptions.ChannelWrongStateError,
    )
    return isinstance(error, lost)


def refusal(error: Exception, message_id: str) -> PublishFailed:
    """The PublishFailed for an error that is not a connection loss."""
    # Only the broker's own reply text, never str() of other pika errors: some of
    # them carry the message, and so its Authorization header.
    if isinstance(error, pika.exceptions.ChannelClosedByBroker):
        reason = f"the broker closed the channel: {error.reply_code} {error.reply_text}"
    else:
        reason = f"pika raised {type(error).__name__}"
    return PublishFailed(reason, message_id=message_id)


def describe(error: Exception) -> str:
    """A connection error in one short line."""
    # Only ever given connection errors: they name sockets and broker reply texts,
    # never a message, so never a token.
    detail = str(error) or "; ".join(repr(arg) for arg in error.args)
    text = f"{type(error).__name__}: {detail}"
    return text if len(text) <= 300 else text[:297] + "..."


def cause(error: BaseException) -> BaseException:
    """The error under pika's wrappers: the socket's, the TLS layer's or the broker's own."""
    for _ in range(10):  # pika nests them two or three deep; never loop forever
        if isinstance(error, AMQPConnectionWorkflowFailed) and error.exceptions:
            error = error.exceptions[-1]
        elif isinstance(error, AMQPConnectorPhaseErrorBase):
            error = error.exception
        elif (type(error) is pika.exceptions.AMQPConnectionError and error.args
              and isinstance(error.args[0], BaseException)):
            error = error.args[0]
        else:
            break
    return error


def login_refused(error: BaseException) -> bool:
    """True when the broker refused the credentials or the virtual host: trying again won't help."""
    refusals = (
        pika.exceptions.ProbableAuthenticationError,
        pika.exceptions.AuthenticationError,
        pika.exceptions.ProbableAccessDeniedError,
    )
    return isinstance(cause(error), refusals)


def why(error: BaseException) -> str:
    """Why a connection failed, in a few words a person can act on."""
    inner = cause(error)
    if isinstance(inner, pika.exceptions.ProbableAccessDeniedError):
        return "the broker refused access to the virtual host (NOT_ALLOWED)"
    if isinstance(inner, pika.exceptions.ProbableAuthenticationError
                  | pika.exceptions.AuthenticationError):
        return "the broker refused the login (ACCESS_REFUSED)"
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused: nothing listens there"
    if isinstance(inner, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(inner, TimeoutError | AMQPConnectorStackTimeout):
        return "no answer in time"
    if isinstance(inner, ssl.SSLError):
        return f"TLS failed: {inner.reason or inner}"
    if isinstance(inner, pika.exceptions.ConnectionClosedByBroker):
        return f"the broker closed the connection: {inner.reply_code} {inner.reply_text}"
    lost = pika.exceptions.StreamLostError | pika.exceptions.IncompatibleProtocolError
    if isinstance(inner, lost):
        return "the connection was lost"
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    return describe(inner) if isinstance(inner, Exception) else type(inner).__name__


def access_refused(parameters: pika.URLParameters, error: BaseException,
                   message_id: str | None) -> AccessRefused:
    """The AccessRefused for a login or virtual host the broker refused, naming which."""
    where = f"{parameters.host}:{parameters.port}"
    if isinstance(cause(error), pika.exceptions.ProbableAccessDeniedError):
        reason = (f"the broker at {where} refused access to the virtual host "
                  f"{parameters.virtual_host!r} (NOT_ALLOWED): check that it exists and that "
                  "the user may use it")
    else:
        user = getattr(parameters.credentials, "username", "?")
        reason = (f"the broker at {where} refused the login of user {user!r} "
                  "(ACCESS_REFUSED): check the user name and password of the URL")
    return AccessRefused(reason, message_id=message_id)


def unreachable(hosts: str, error: BaseException, timeout: float, message_id: str | None,
                *, sent: bool) -> ConnectionFailed:
    """The ConnectionFailed of a call whose time ran out without a broker to send it on."""
    reason = f"no broker answered at {hosts} within {timeout:g} s ({why(error)})"
    return ConnectionFailed(reason, message_id=message_id, sent=sent)


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
