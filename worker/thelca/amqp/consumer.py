"""The batch consumer: connect, declare, consume in batches, publish with confirms, reconnect.

It runs one
SelectConnection per consumer so that publisher confirms are pipelined
instead of waited for one by one, and it acks a batch of deliveries only
after the broker has confirmed every message the batch produced.

Everything happens on the connection's own thread (pika connections are not
thread-safe); `stop()` is the one call that is safe from elsewhere.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import takewhile
from typing import Any, Protocol

import pika
import pika.channel
import pika.connection
import pika.exceptions
import pika.frame
import pika.spec

from thelca import metrics
from thelca.errors import AuthorityUnavailable, ConfigurationError, StoreUnavailable
from thelca.roles.messages import BatchHandler, Incoming, Outgoing
from thelca_client.contract import Names
from thelca_client.tls import TlsFiles, apply_tls

log = logging.getLogger(__name__)

QUORUM = {"x-queue-type": "quorum"}
# Redeliveries before a quorum queue dead-letters a message. Every queue sets its
# own explicitly: RabbitMQ 4 gives quorum queues a default of 20 (dead-lettering,
# or dropping where there is no dead-letter exchange), and on 3.10 -1 does not
# mean "unlimited" but drops a message at its first return.
DELIVERY_LIMIT = 20  # a command that keeps killing the worker
LOG_DELIVERY_LIMIT = 1000  # a restart of the logger returns every prefetched event
DEAD_DELIVERY_LIMIT = 1_000_000  # listing dead letters returns them; never drop one


# Refusals while declaring that no retry can cure, and what the operator can do.
SETUP_REFUSALS = {
    403: "This broker user lacks permissions on them (the README's \"Broker users\" section "
         "lists what each role needs).",
    406: "An earlier deployment declared one with other arguments: drain and delete it, "
         "or use another prefix.",
}


@dataclass(frozen=True)
class Queue:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    bind_to: str | None = None


@dataclass(frozen=True)
class Topology:
    fanout_exchanges: tuple[str, ...]
    queues: tuple[Queue, ...]


def thelca_topology(names: Names) -> Topology:
    """Every broker object of the contract, which the worker declares at start.

    The logger and the replay consumer declare only their part (logger_topology,
    replay_topology), so that their broker users need no access to what may hold
    tokens.

    Declaring the same thing twice is harmless; declaring it with other arguments
    is refused by the broker, so the arguments live here and nowhere else.
    """
    dead_letter = {
        "x-dead-letter-exchange": names.dead,
        "x-dead-letter-strategy": "at-least-once",  # needs x-overflow: reject-publish
        "x-overflow": "reject-publish",
    }
    return Topology(
        fanout_exchanges=(names.events, names.dead),
        queues=(
            Queue(names.commands, {**QUORUM, **dead_letter, "x-delivery-limit": DELIVERY_LIMIT}),
            Queue(names.events_log,
                  {**QUORUM, **dead_letter, "x-delivery-limit": LOG_DELIVERY_LIMIT},
                  bind_to=names.events),
            Queue(names.dead, {**QUORUM, "x-delivery-limit": DEAD_DELIVERY_LIMIT},
                  bind_to=names.dead),
            Queue(names.replay, {**QUORUM, **dead_letter, "x-delivery-limit": DELIVERY_LIMIT}),
        ),
    )


def logger_topology(names: Names) -> Topology:
    """What the logger uses: the events exchange, its queue and their binding.

    Not the commands queue nor the dead letters, both of which may hold tokens,
    so that the logger's broker user needs no permission on them (README,
    "Broker users"). The worker declares the whole topology, the dead-letter
    exchange that the logger publishes to included.
    """
    whole = thelca_topology(names)
    return Topology((names.events,), tuple(q for q in whole.queues if q.name == names.events_log))


def replay_topology(names: Names) -> Topology:
    """What the replay consumer uses: its own queue, and nothing that may hold tokens."""
    whole = thelca_topology(names)
    return Topology((), tuple(q for q in whole.queues if q.name == names.replay))


def connection_parameters(
    urls: str, name: str = "thelca", *, tls: TlsFiles | None = None
) -> list[pika.URLParameters]:
    """One entry per URL of a comma-separated list, tried in turn.

    The name shows in the management UI and `rabbitmqctl list_connections`. An
    amqps:// URL verifies the broker's certificate and host name, with the CA
    file and client certificate of `tls` when given.
    """
    params = []
    for url in (u.strip() for u in urls.split(",")):
        if url:
            p = pika.URLParameters(url)
            apply_tls(p, url, tls)
            p.client_properties = {"connection_name": name}
            params.append(p)
    if not params:
        raise ValueError("no broker URL given")
    return params


def safe_url(url: str) -> str:
    """A broker URL fit for a log line: the password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


@dataclass
class _Batch:
    """Deliveries handled together, and the publishes that must be confirmed first."""

    delivery_tags: list[int]
    received: list[float]
    published: list[Outgoing]
    unconfirmed: set[int]
    nacked: bool = False


class Reconnecting:
    """Runs sessions (one connection each) until stopped, reconnecting with backoff.

    Subclasses say how to make a session; a session's state dies with it, and
    whatever it had not acked is redelivered by the broker.
    """

    def __init__(
        self,
        urls: str,
        queue: str,
        topology: Topology,
        *,
        prefetch: int,
        name: str,
        on_state: Callable[[str], None] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.urls = urls
        self.tls = tls
        self.queue = queue
        self.topology = topology
        self.prefetch = prefetch
        self.name = name
        self.on_state = on_state or (lambda state: None)
        self._stopping = threading.Event()
        self._session: SessionLike | None = None
        self._lock = threading.RLock()  # stop() may run in a signal handler on this thread
        self._fatal: ConfigurationError | None = None

    def new_session(self, params: pika.URLParameters) -> SessionLike:
        raise NotImplementedError

    def run(self) -> None:
        """Consume until stop() is called, reconnecting whenever the connection is lost."""
        failures = 0
        while not self._stopping.is_set():
            for params in connection_parameters(self.urls, f"thelca {self.name} {self.queue}",
                                                tls=self.tls):
                if self._stopping.is_set():
                    break
                session = self.new_session(params)
                with self._lock:
                    self._session = session
                session.run()
                if session.consumed:
                    failures = 0
            if self._stopping.is_set():
                break
            failures += 1
            delay = min(30.0, 0.5 * 2 ** min(failures, 6)) * random.uniform(0.8, 1.2)  # noqa: S311 - jitter
            self.on_state(f"reconnecting in {delay:.1f}s")
            self._stopping.wait(delay)
        self.on_state("stopped")
        if self._fatal is not None:
            raise self._fatal

    def fail(self, error: ConfigurationError) -> None:
        """Stop for good: retrying cannot help (the broker refuses our declarations)."""
        self._fatal = error
        self._stopping.set()

    def stop(self) -> None:
        """Stop consuming, finish and ack what is in flight, then close. Thread-safe."""
        self._stopping.set()
        with self._lock:
            session = self._session
        if session is not None:
            session.request_stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()


class SessionLike(Protocol):
    consumed: bool

    def run(self) -> None: ...

    def request_stop(self) -> None: ...


class BatchConsumer(Reconnecting):
    """Consumes one queue in batches and feeds them to a BatchHandler.

    Reconnects with backoff when the broker goes away; deliveries that were
    not acked are redelivered by the broker, so the handler must be idempotent.
    """

    def __init__(
        self,
        urls: str,
        queue: str,
        handler: BatchHandler,
        topology: Topology,
        *,
        prefetch: int = 200,
        max_batch: int = 200,
        name: str = "consumer",
        on_state: Callable[[str], None] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(urls, queue, topology, prefetch=prefetch, name=name, on_state=on_state,
                         tls=tls)
        self.handler = handler
        self.max_batch = max_batch

    def new_session(self, params: pika.URLParameters) -> SessionLike:
        return _Session(self, params)


def declare_steps(
    channel: pika.channel.Channel, topology: Topology, prefetch: int
) -> list[Callable[..., Any]]:
    """The broker calls that declare the whole topology and set the prefetch."""
    steps: list[Callable[..., Any]] = []
    for exchange in topology.fanout_exchanges:
        steps.append(partial(channel.exchange_declare, exchange, exchange_type="fanout",
                             durable=True))
    for queue in topology.queues:
        steps.append(partial(channel.queue_declare, queue.name, durable=True,
                             arguments=queue.arguments))
        if queue.bind_to:
            steps.append(partial(channel.queue_bind, queue.name, queue.bind_to,
                                 routing_key=""))
    steps.append(partial(channel.basic_qos, prefetch_count=prefetch))
    return steps


def run_steps(steps: list[Callable[..., Any]], done: Callable[[], None]) -> None:
    """Run broker calls one after another, each started by the previous one's reply."""
    if not steps:
        done()
        return
    first, rest = steps[0], steps[1:]
    first(callback=lambda _frame: run_steps(rest, done))


def refusal(owner: Reconnecting, consumed: bool, reason: Any) -> None:
    """Stop the owner for good when the broker refused a declaration no retry can cure."""
    code = getattr(reason, "reply_code", None)
    if not consumed and code in SETUP_REFUSALS:
        owner.fail(ConfigurationError(
            f"{owner.name}: the broker refused thelca's broker objects: "
            f"{reason.reply_text}. {SETUP_REFUSALS[code]}"))


class ConnectionSession:
    """One connection and its channel, from opening to closing; subclasses do the work.

    Its state dies with it, so no delivery tag outlives its channel. Subclasses
    provide `_on_confirm`, `_start` (declarations done: start consuming) and
    `_begin_stop`, and may add to `_prepare_channel` and `_ended`.
    """

    def __init__(self, owner: Reconnecting, params: pika.URLParameters) -> None:
        self.owner = owner
        self.params = params
        self.connection: pika.SelectConnection | None = None
        self.channel: pika.channel.Channel | None = None
        self.consumed = False
        self.consumer_tag: str | None = None
        self._closing = False
        self._stop_deadline = 0.0

    def run(self) -> None:
        try:
            self.connection = pika.SelectConnection(
                self.params,
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_connection_closed,
            )
        except Exception as error:
            log.warning("%s: cannot connect to %s:%s: %s", self.owner.name, self.params.host,
                        self.params.port, error)
            return
        try:
            self.connection.ioloop.start()
        finally:
            self._ended()

    def request_stop(self) -> None:
        connection = self.connection
        if connection is None:
            return
        try:
            connection.ioloop.add_callback_threadsafe(self._begin_stop)
        except Exception:  # the loop is already gone
            log.debug("stop requested after the loop closed")

    def _ended(self) -> None:
        """The loop has stopped; release what the session holds."""

    def _on_open_error(self, connection: pika.connection.Connection, error: Any) -> None:
        log.warning("%s: cannot connect to %s:%s: %s", self.owner.name,
                    self.params.host, self.params.port, error)
        self._stop_loop()

    def _on_connection_open(self, connection: pika.connection.Connection) -> None:
        self.owner.on_state(f"connected to {self.params.host}:{self.params.port}")
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_closed(self, connection: pika.connection.Connection, reason: Any) -> None:
        if not self._closing:
            log.warning("%s: disconnected: connection lost: %s", self.owner.name, reason)
            metrics.RECONNECTS.labels(self.owner.name).inc()
        metrics.CONSUMING.labels(self.owner.name).set(0)
        self._stop_loop()

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: Any) -> None:
        if not self._closing:
            log.warning("%s: disconnected: channel closed: %s", self.owner.name, reason)
            metrics.RECONNECTS.labels(self.owner.name).inc()
        metrics.CONSUMING.labels(self.owner.name).set(0)
        refusal(self.owner, self.consumed, reason)
        self._close_connection()

    def _close_connection(self) -> None:
        self._closing = True
        if self.connection is not None and not (
            self.connection.is_closing or self.connection.is_closed
        ):
            self.connection.close()
        else:
            self._stop_loop()

    def _stop_loop(self) -> None:
        if self.connection is not None:
            self.connection.ioloop.stop()

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        self.channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        self._prepare_channel(channel)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm)
        run_steps(declare_steps(channel, self.owner.topology, self.owner.prefetch),
                  self._on_declared)

    def _prepare_channel(self, channel: pika.channel.Channel) -> None:
        """Add callbacks before publishing starts (the replay's returns)."""

    def _consume(self, on_message: Callable[..., None]) -> None:
        assert self.channel is not None
        self.consumer_tag = self.channel.basic_consume(
            self.owner.queue, on_message_callback=on_message, auto_ack=False)
        self.consumed = True
        metrics.CONSUMING.labels(self.owner.name).set(1)
        self.owner.on_state(f"consuming {self.owner.queue}")

    def _on_confirm(self, frame: pika.frame.Method[Any]) -> None:
        raise NotImplementedError

    def _on_declared(self) -> None:
        if self.owner.stopping:  # a stop asked for while the declarations ran
            self._begin_stop()
        else:
            self._start()

    def _start(self) -> None:
        """The declarations are done: start consuming."""
        raise NotImplementedError

    def _begin_stop(self) -> None:
        raise NotImplementedError


class _Session(ConnectionSession):
    """The batch consumer's session: deliveries in batches, acked once their publishes are
    confirmed."""

    DRAIN_TIMEOUT = 30.0

    def __init__(self, owner: BatchConsumer, params: pika.URLParameters) -> None:
        super().__init__(owner, params)
        self.owner: BatchConsumer = owner
        self._waiting: list[tuple[int, Incoming, float]] = []
        self._flush_scheduled = False
        self._tidy_scheduled = False
        self._batches: deque[_Batch] = deque()
        self._next_seq = 1
        self._seq_to_batch: dict[int, _Batch] = {}
        self._retry_delay = 0.0
        self._republish_delay = 0.0
        self._delivery_seconds = metrics.DELIVERY_SECONDS.labels(owner.name)

    def _start(self) -> None:
        self._recover()
        self._consume(self._on_message)

    # ------------------------------------------------------------ consume

    def _on_message(
        self,
        channel: pika.channel.Channel,
        method: pika.spec.Basic.Deliver,
        properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        incoming = incoming_of(method, properties, body)
        self._waiting.append((int(method.delivery_tag or 0), incoming, time.monotonic()))
        self._schedule_flush(0)

    def _schedule_flush(self, delay: float) -> None:
        # Deliveries read from the socket together are dispatched before timers
        # run, so a zero delay gathers them into one batch (group commit).
        if not self._flush_scheduled and self.connection is not None:
            self._flush_scheduled = True
            self.connection.ioloop.call_later(delay, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._waiting or self._closing or self.channel is None:
            return
        batch = self._waiting[: self.owner.max_batch]
        try:
            publish = self.owner.handler.handle([incoming for _, incoming, _ in batch])
        except (StoreUnavailable, AuthorityUnavailable) as error:
            # Known and passing (a database restart, a deadlock, an unreachable key
            # set): one line is enough; the batch is kept and tried again.
            self._retry_later(batch, f"{type(error).__name__}: {error}")
            return
        except Exception:
            log.exception("%s: a batch of %d failed unexpectedly", self.owner.name, len(batch))
            self._retry_later(batch, "see the traceback above")
            return
        self._retry_delay = 0.0
        del self._waiting[: len(batch)]
        metrics.BATCH_SIZE.labels(self.owner.name).observe(len(batch))
        self._publish_batch([tag for tag, _, _ in batch], publish, [t for _, _, t in batch])
        if self._waiting:
            self._schedule_flush(0)

    def _retry_later(self, batch: list[tuple[int, Incoming, float]], why: str) -> None:
        self._retry_delay = min(30.0, max(0.5, self._retry_delay * 2))
        log.warning("%s: a batch of %d is retried in %.1fs (%s)", self.owner.name, len(batch),
                    self._retry_delay, why)
        self._schedule_flush(self._retry_delay)

    # ------------------------------------------------------------ publish and ack

    def _publish_batch(
        self, delivery_tags: list[int], publish: list[Outgoing], received: list[float]
    ) -> None:
        assert self.channel is not None
        batch = _Batch(delivery_tags, received, publish, set())
        for message in publish:
            self.channel.basic_publish(
                message.exchange, message.routing_key, message.body, basic_properties(message)
            )
            batch.unconfirmed.add(self._next_seq)
            self._seq_to_batch[self._next_seq] = batch
            self._next_seq += 1
        self._batches.append(batch)
        metrics.CONFIRMS_PENDING.labels(self.owner.name).set(len(self._seq_to_batch))
        self._settle()

    def _on_confirm(self, frame: pika.frame.Method[Any]) -> None:
        method = frame.method
        tag = int(method.delivery_tag)
        nacked = isinstance(method, pika.spec.Basic.Nack)
        # Sequence numbers enter the dict in increasing order, so a multiple confirm
        # only needs its head, not a scan of everything in flight.
        seqs = (list(takewhile(lambda seq: seq <= tag, self._seq_to_batch))
                if method.multiple else [tag])
        for seq in seqs:
            batch = self._seq_to_batch.pop(seq, None)
            if batch is not None:
                batch.unconfirmed.discard(seq)
                batch.nacked = batch.nacked or nacked
        metrics.CONFIRMS_PENDING.labels(self.owner.name).set(len(self._seq_to_batch))
        self._settle()

    def _settle(self) -> None:
        """Ack (or requeue) batches whose publishes are all confirmed, oldest first."""
        assert self.channel is not None
        while self._batches and not self._batches[0].unconfirmed:
            batch = self._batches.popleft()
            if batch.nacked and not self._kept(batch):
                log.warning("%s: the broker refused a publish; requeueing %d deliveries",
                            self.owner.name, len(batch.delivery_tags))
                for tag in batch.delivery_tags:
                    self.channel.basic_nack(tag, requeue=True)
                continue
            if batch.delivery_tags:
                self.channel.basic_ack(max(batch.delivery_tags), multiple=True)
            self._observe(batch)
            if batch.published and not batch.nacked:
                self._republish_delay = 0.0
                self.owner.handler.confirmed(batch.published)
                self._schedule_tidy()
        if self._stop_deadline and self._drained():
            self._run_tidy()
            self._close_connection()

    def _kept(self, batch: _Batch) -> bool:
        """After a refused publish, whether the handler kept what must not be lost.

        Requeueing commands that already took effect would redeliver them in a loop
        for as long as the broker refuses (and on RabbitMQ 3.10 count each return
        against the delivery limit); instead the handler keeps the batch's events in
        its outbox, the deliveries are acked, and the outbox is published again.
        """
        try:
            kept = self.owner.handler.nacked(batch.published)
        except Exception:
            log.exception("%s: keeping refused publishes failed", self.owner.name)
            return False
        if kept:
            self._republish_delay = min(30.0, max(1.0, self._republish_delay * 2))
            log.warning("%s: the broker refused a publish; its events are kept and published "
                        "again in %.0fs", self.owner.name, self._republish_delay)
            assert self.connection is not None
            self.connection.ioloop.call_later(self._republish_delay, self._recover)
        return kept

    def _recover(self) -> None:
        """Publish the handler's unconfirmed messages (at connect, and after a refusal)."""
        if self._closing or self.channel is None:
            return
        try:
            recovered = self.owner.handler.recover()
        except (StoreUnavailable, AuthorityUnavailable) as error:
            log.warning("%s: cannot read the outbox now (%s); trying again in 5s",
                        self.owner.name, error)
            assert self.connection is not None
            self.connection.ioloop.call_later(5.0, self._recover)
            return
        if recovered:
            log.info("%s: republishing %d unconfirmed events", self.owner.name, len(recovered))
            self._publish_batch([], recovered, [])

    def _observe(self, batch: _Batch) -> None:
        role = self.owner.name
        now = time.monotonic()
        delivery_seconds = self._delivery_seconds
        for received in batch.received:
            delivery_seconds.observe(now - received)
        for message in batch.published:
            metrics.PUBLISHED.labels(role, message.exchange or "(default)").inc()

    def _schedule_tidy(self) -> None:
        # Lets the handler commit its bookkeeping (such as clearing confirmed
        # events from the outbox) when traffic stops.
        if not self._tidy_scheduled and self.connection is not None:
            self._tidy_scheduled = True
            self.connection.ioloop.call_later(1.0, self._tidy)

    def _tidy(self) -> None:
        self._tidy_scheduled = False
        if self._waiting or self._closing:
            return
        self._run_tidy()

    def _run_tidy(self) -> None:
        try:
            self.owner.handler.tidy()
        except Exception:
            log.exception("%s: tidying up failed; will try again", self.owner.name)

    # ------------------------------------------------------------ stop

    def _begin_stop(self) -> None:
        if self._stop_deadline:
            return
        self._stop_deadline = time.monotonic() + self.DRAIN_TIMEOUT
        if self.channel is not None and self.consumer_tag is not None and self.channel.is_open:
            self.channel.basic_cancel(self.consumer_tag)
        self._wait_for_drain()

    def _drained(self) -> bool:
        return not self._waiting and not self._batches

    def _wait_for_drain(self) -> None:
        if self._closing:  # _settle closed it already
            return
        if self._drained() or time.monotonic() > self._stop_deadline:
            self._run_tidy()
            self._close_connection()
        elif self.connection is not None:
            self.connection.ioloop.call_later(0.05, self._wait_for_drain)


def incoming_of(
    method: pika.spec.Basic.Deliver, properties: pika.spec.BasicProperties, body: bytes
) -> Incoming:
    """A delivery as the application sees it: no pika object leaves this package."""
    return Incoming(
        body=body,
        message_id=properties.message_id,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        headers=dict(properties.headers or {}),
        type=properties.type,
        redelivered=bool(method.redelivered),
    )


def basic_properties(message: Outgoing) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=message.content_type,
        delivery_mode=2 if message.persistent else 1,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        type=message.type,
        headers=message.headers,
    )

