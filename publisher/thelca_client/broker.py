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
import time
from collections.abc import Iterator
from typing import Final

import pika
import pika.exceptions
from pika.spec import BasicProperties

from thelca_client.commands import Outgoing
from thelca_client.contract import CONTENT_TYPE, DIRECT_REPLY_TO
from thelca_client.errors import PublishFailed
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


def basic_properties(message: Outgoing, correlation_id: str | None = None) -> BasicProperties:
    """A persistent JSON command; with a correlation_id its reply comes by direct reply-to."""
    return BasicProperties(
        content_type=CONTENT_TYPE,
        delivery_mode=PERSISTENT,
        message_id=message.message_id,
        correlation_id=correlation_id,
        reply_to=None if correlation_id is None else DIRECT_REPLY_TO,
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
