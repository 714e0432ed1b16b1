"""The blocking client's link to the broker: connect, publish under confirms, route replies, retry.

One pika BlockingConnection with one channel, so it belongs to the thread that
uses it. The channel has publisher confirms and a consumer on direct reply-to;
every command goes to the default exchange with `mandatory`, so a missing
commands queue is an error instead of a silent loss. A reply is matched to its
call by correlation_id, and a late one (its call timed out) is dropped.

Connecting tries each URL of the list in turn, each given what is left of the
call's time. After a lost connection the attempt runs again on a new one, with
the same message_id, after a backoff, until the call's deadline; then
ConnectionFailed (or ReplyTimeout when the broker answered but no reply came).
A publish the broker refuses (a nack) runs again the same way on a fresh
channel: on RabbitMQ 3.10 a channel whose first publish to a quorum queue came
while the queue's leader was down has every later publish nacked until that
node is back, while a new channel works within half a second of the election.
Only when the deadline passes does a nack become PublishFailed.
A broker that refuses the login or the virtual host is not asked again:
AccessRefused at once.
No pika exception leaves this module's public methods.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils.connection_workflow import AMQPConnectorException
from pika.spec import Basic, BasicProperties

from thelca_client.broker import (
    Nacked,
    access_refused,
    backoff,
    basic_properties,
    bounded,
    describe,
    hosts,
    is_connection_loss,
    login_refused,
    refusal,
    unreachable,
)
from thelca_client.commands import Outgoing, new_id
from thelca_client.contract import DIRECT_REPLY_TO
from thelca_client.errors import PublishFailed, ReplyTimeout, ThelcaClientError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Connection:
    """Carries commands to one queue and their replies back, reconnecting within each call's time.

    It connects on its first call, not when made, so that it can be made before
    the broker is up. Use it from one thread only.
    """

    def __init__(self, parameters: list[pika.URLParameters], *, queue: str) -> None:
        self.parameters = parameters
        self.queue = queue
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._closed = False
        self._awaiting: str | None = None
        self._reply: bytes | None = None

    def hosts(self) -> str:
        return hosts(self.parameters)

    def close(self) -> None:
        self._closed = True
        self._drop_connection()

    def call(self, message: Outgoing, *, timeout: float) -> bytes:
        """Publish the message with reply_to and return its reply's body.

        Each attempt has a new correlation_id, so a reply to an earlier attempt
        that comes late is not taken for this one's.
        """
        deadline = time.monotonic() + timeout

        def attempt(channel: BlockingChannel) -> bytes:
            properties = basic_properties(message, correlation_id=new_id())
            return self._call(channel, message.body, properties, deadline, timeout)

        return self._retrying(attempt, message.message_id, deadline, timeout)

    def publish(self, message: Outgoing, *, timeout: float) -> None:
        """Publish the message without reply_to; return once the broker confirmed it."""
        properties = basic_properties(message)
        self._retrying(
            lambda channel: self._publish(channel, message.body, properties),
            message.message_id,
            time.monotonic() + timeout,
            timeout,
        )

    # ------------------------------------------------------------ one attempt

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
        queue = self.queue
        try:
            channel.basic_publish("", queue, body, properties, mandatory=True)
        except pika.exceptions.UnroutableError:
            reason = (
                f"queue {queue!r} does not exist: is a thelca worker running with the same prefix?"
            )
            raise PublishFailed(reason, message_id=message_id) from None
        except pika.exceptions.NackError:
            raise Nacked(queue) from None

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
        message_id: str,
        deadline: float,
        timeout: float,
    ) -> T:
        """attempt's result, running it again on a new connection after each connection loss."""
        delays = backoff()
        failures = 0
        sent = False  # whether an attempt got as far as publishing: only then may it have landed
        while True:
            try:
                channel = self._ready(deadline, message_id)
                sent = True
                return attempt(channel)
            except Nacked as nacked:
                # Never again on this channel (see the module docstring).
                self._drop_channel()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PublishFailed(nacked.reason, message_id=message_id) from None
                delay = min(next(delays), remaining)
                log.debug("the broker refused message %s (nack); trying again in %.2f s on "
                          "a fresh channel", message_id, delay)
            except (pika.exceptions.AMQPError, OSError) as error:
                if not is_connection_loss(error):
                    raise refusal(error, message_id) from None
                self._drop_connection()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise unreachable(self.hosts(), error, timeout, message_id,
                                      sent=sent) from None
                delay = min(next(delays), remaining)
                failures += 1
                _log_retry(error, delay, message_id, first=failures == 1)
            time.sleep(delay)

    def _ready(self, deadline: float, message_id: str) -> BlockingChannel:
        """The open channel, reconnecting first when the broker dropped the connection."""
        if self._closed:
            raise ThelcaClientError("the client is closed")
        connection = self._connection
        if connection is None or not _responds(connection):
            self._drop_connection()
            connection = self._connection = self._connect(deadline, message_id)
        if self._channel is None or not self._channel.is_open:
            self._channel = self._open_channel(connection)
        return self._channel

    def _connect(self, deadline: float, message_id: str) -> pika.BlockingConnection:
        """The first broker of the list that answers, each given what is left of the time.

        When none does and one of them refused the login: AccessRefused, at once.
        """
        errors: list[Exception] = []
        refused: tuple[pika.URLParameters, Exception] | None = None
        for parameters in self.parameters:
            try:
                return pika.BlockingConnection(bounded(parameters, deadline))
            # pika lets some socket errors through raw, a failed DNS lookup for one, and
            # its own workflow errors, such as a handshake that timed out (a peer that
            # accepts the connection but never speaks AMQP, or drops a TLS handshake).
            except (pika.exceptions.AMQPConnectionError, AMQPConnectorException,
                    OSError) as error:
                log.debug(
                    "no broker at %s:%s (%s)", parameters.host, parameters.port, describe(error)
                )
                if login_refused(error):
                    refused = parameters, error
                lost = isinstance(error, AMQPConnectorException)
                errors.append(pika.exceptions.AMQPConnectionError(describe(error))
                              if lost else error)
            if time.monotonic() >= deadline:
                break
        if refused is not None:
            raise access_refused(*refused, message_id)
        raise errors[-1]

    def _open_channel(self, connection: pika.BlockingConnection) -> BlockingChannel:
        channel = connection.channel()
        channel.confirm_delivery()
        # Direct reply-to only delivers to a consumer that exists, on the publishing
        # channel, before the command is published.
        channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
        return channel

    def _drop_channel(self) -> None:
        """Close the channel (the next attempt opens another); if that fails, the connection."""
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            try:
                channel.close()
            except (pika.exceptions.AMQPError, OSError):
                self._drop_connection()

    def _drop_connection(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError):
                log.debug("the connection was already gone while closing it")


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


def _log_retry(error: Exception, delay: float, message_id: str, *, first: bool) -> None:
    # One warning per outage is enough: the later lines only repeat it.
    log.log(
        logging.WARNING if first else logging.DEBUG,
        "no connection to the broker (%s); trying again in %.2f s (message %s)",
        describe(error),
        delay,
        message_id,
    )
