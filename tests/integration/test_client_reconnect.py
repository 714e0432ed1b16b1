"""thelca_client.Client surviving lost connections, against a real RabbitMQ and no worker.

A stand-in responder answers like thelca does: a repeated message_id gets the
reply stored for it the first time, and that reply counts the distinct
message_ids seen so far. So a re-send that reuses its message_id shows as two
deliveries and a reply that says 1.

Only the client's own connection is ever broken, in two ways:
- the broker closes it: `rabbitmqctl close_connection` on the connection that
  carries the client's unique connection_name (a server-side close,
  ConnectionClosedByBroker in pika);
- its TCP link dies: the client connects through a relay (Proxy) that the test
  cuts (StreamLostError in pika). The relay can also hold back what the broker
  sends, so that a publish reaches the queue while its confirm never reaches the
  client: the loss then falls exactly between the two.
Nothing here stops the broker or touches other connections.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from tests.integration.conftest import broker_connection_pids, close_connections
from tests.integration.test_client import ITEM, Responder
from thelca_client import Client, ConnectionFailed, Reply
from thelca_client.contract import Names

pytestmark = pytest.mark.broker

TOKEN = "tok-0123456789-secret"
NO_BROKER = "amqp://guest:guest@127.0.0.1:1/%2F"

Hook = Callable[[BasicProperties], None]


class IdempotentResponder(Responder):
    """Answers like thelca: a repeated message_id gets the reply it got the first time.

    That reply carries `distinct`, the number of distinct message_ids (fire-and-forget
    ones included) seen when it was made. `on_command` runs on the responder's thread
    before each answer.
    """

    def __init__(self, url: str, queue: str, on_command: Hook) -> None:
        super().__init__(url, queue, self._answer)
        self.on_command = on_command
        self.distinct: set[str] = set()
        self.replies: dict[str, Reply] = {}

    def _on_command(
        self,
        channel: BlockingChannel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        self.on_command(properties)
        self.distinct.add(str(properties.message_id))
        super()._on_command(channel, method, properties, body)

    def _answer(self, properties: BasicProperties, body: bytes) -> Reply:
        message_id = str(properties.message_id)
        if message_id not in self.replies:
            extra = {"message_id": message_id, "distinct": len(self.distinct)}
            self.replies[message_id] = Reply(200, item=ITEM, version=1, extra=extra)
        return self.replies[message_id]

    def message_ids(self) -> list[str]:
        return [str(properties.message_id) for properties, _ in self.received]

    def wait_for(self, count: int, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.message_ids()


def when_first_seen(message_id: str, action: Callable[[], None]) -> Hook:
    """A hook that runs action the first time message_id arrives, and never again."""
    done = threading.Event()

    def hook(properties: BasicProperties) -> None:
        if properties.message_id == message_id and not done.is_set():
            done.set()
            action()

    return hook


# ---------------------------------------------------------------- breaking one connection


class Proxy:
    """A TCP relay to the broker; cutting it breaks only the connections made through it."""

    def __init__(self, amqp_url: str) -> None:
        broker = pika.URLParameters(amqp_url)
        self.target = (broker.host, broker.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        port = self.listener.getsockname()[1]
        self.url = _with_address(amqp_url, f"127.0.0.1:{port}")
        self.accepted = 0
        self._holding = threading.Event()
        self._shut = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        """Stop passing on what the broker sends (confirms, replies) until the next cut."""
        self._holding.set()

    def cut(self) -> None:
        """Break every connection made so far, as a dead link would; later ones pass."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
            self._holding.clear()
        for sock in sockets:
            # shutdown, not close: the relay thread may be in select() on it.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def shut(self) -> None:
        """Refuse new connections too, as a broker that died would."""
        self._shut.set()
        self.listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._shut.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets += [client, upstream]
        try:
            while self._pass_on(client, upstream):
                pass
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def _pass_on(self, client: socket.socket, upstream: socket.socket) -> bool:
        # While holding, the broker's bytes wait unread in the socket buffer.
        watched = [client] if self._holding.is_set() else [client, upstream]
        readable, _, _ = select.select(watched, [], [], 0.05)
        for source in readable:
            if source is upstream and self._holding.is_set():
                continue  # hold() came while select() was waiting
            data = source.recv(65536)
            if not data:
                return False
            (upstream if source is client else client).sendall(data)
        return True


def _with_address(amqp_url: str, address: str) -> str:
    parts = urlsplit(amqp_url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{address}" if userinfo else address
    return urlunsplit(parts._replace(netloc=netloc))


def broker_connection_pid(connection_name: str) -> str | None:
    """The broker's pid of the one connection named connection_name, if there is one."""
    pids = broker_connection_pids(connection_name)
    assert len(pids) <= 1, f"more than one connection is named {connection_name}"
    return pids[0] if pids else None


def broker_closes(connection_name: str) -> None:
    """Has the broker close the connection named connection_name, and only that one."""
    assert close_connections(connection_name) == 1, (
        f"rabbitmqctl lists no connection named {connection_name}: "
        "is the test broker on this machine?"
    )


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def commands(amqp_url: str, prefix: str) -> Iterator[str]:
    """The commands queue, declared by the test since no worker runs; deleted afterwards."""
    queue = Names(prefix).commands
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    connection.channel().queue_declare(queue)
    yield queue
    connection.channel().queue_delete(queue)
    connection.close()


@pytest.fixture
def respond(amqp_url: str, commands: str) -> Iterator[Callable[[Hook], IdempotentResponder]]:
    started: list[IdempotentResponder] = []

    def start(on_command: Hook = lambda properties: None) -> IdempotentResponder:
        responder = IdempotentResponder(amqp_url, commands, on_command)
        responder.start()
        assert responder.ready.wait(10), "the stand-in responder did not start"
        started.append(responder)
        return responder

    yield start
    for responder in started:
        responder.stop()


@pytest.fixture
def proxy(amqp_url: str) -> Iterator[Proxy]:
    relay = Proxy(amqp_url)
    yield relay
    relay.shut()


@pytest.fixture
def connection_name() -> str:
    """A name no other connection on the broker has, so that only this one is closed."""
    return f"thelca-client-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def quiet_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Captures everything logged, then checks that no token got into it."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    assert TOKEN not in caplog.text


# ---------------------------------------------------------------- publish


def test_publish_after_the_broker_closed_the_connection_uses_a_new_one(
    amqp_url: str,
    prefix: str,
    connection_name: str,
    respond: Callable[[Hook], IdempotentResponder],
    quiet_logs: pytest.LogCaptureFixture,
) -> None:
    responder = respond(lambda properties: None)
    with Client(
        amqp_url, prefix=prefix, token=TOKEN, timeout=10, connection_name=connection_name
    ) as client:
        client.publish(b"{}", message_id="before")
        first = broker_connection_pid(connection_name)
        broker_closes(connection_name)

        returned = client.publish(b"{}", message_id="after")

        assert returned == "after"
        assert responder.wait_for(2) == ["before", "after"]
        second = broker_connection_pid(connection_name)
    assert first is not None
    assert second not in (None, first)


def test_a_publish_whose_confirm_was_lost_is_sent_again_with_the_same_message_id(
    prefix: str,
    proxy: Proxy,
    respond: Callable[[Hook], IdempotentResponder],
    quiet_logs: pytest.LogCaptureFixture,
) -> None:
    # The command reaches the queue, then the link dies before its confirm gets through.
    responder = respond(when_first_seen("twice", proxy.cut))
    with Client(proxy.url, prefix=prefix, token=TOKEN, timeout=10) as client:
        client.publish(b"{}", message_id="warm-up")
        responder.wait_for(1)
        proxy.hold()

        returned = client.publish(b"{}", message_id="twice")

    assert returned == "twice"
    assert responder.wait_for(3) == ["warm-up", "twice", "twice"]
    assert proxy.accepted == 2
    assert "no connection to the broker" in quiet_logs.text


# ---------------------------------------------------------------- send


@pytest.mark.parametrize(
    "breaks", ["broker closes it", "link dies", "link dies before the confirm"]
)
def test_a_reply_lost_with_the_connection_comes_from_a_resend_with_the_same_message_id(
    amqp_url: str,
    prefix: str,
    proxy: Proxy,
    respond: Callable[[Hook], IdempotentResponder],
    quiet_logs: pytest.LogCaptureFixture,
    breaks: str,
) -> None:
    name = f"thelca-client-test-{uuid.uuid4().hex[:10]}"
    # The responder breaks the connection when the command arrives, then answers:
    # its first reply goes to a reply-to that died with the client's channel. The
    # rabbitmqctl calls take long enough for the client to be waiting for the reply
    # by then; holding back the broker's bytes makes the loss come before the confirm.
    action = (lambda: broker_closes(name)) if breaks == "broker closes it" else proxy.cut
    responder = respond(when_first_seen("lost-reply", action))
    with Client(proxy.url, prefix=prefix, token=TOKEN, timeout=10, connection_name=name) as client:
        client.publish(b"{}", message_id="warm-up")  # connects: hold() needs a connection
        responder.wait_for(1)
        if breaks == "link dies before the confirm":
            proxy.hold()

        reply = client.read("some-id", message_id="lost-reply")

    assert reply.extra == {"message_id": "lost-reply", "distinct": 2}
    assert responder.message_ids() == ["warm-up", "lost-reply", "lost-reply"]
    first, second = (properties.correlation_id for properties, _ in responder.received[1:])
    assert first != second
    assert proxy.accepted == 2


# ---------------------------------------------------------------- URL lists


def test_a_url_list_whose_first_broker_is_dead_still_works(
    amqp_url: str, prefix: str, respond: Callable[[Hook], IdempotentResponder]
) -> None:
    responder = respond(lambda properties: None)

    with Client(f"{NO_BROKER},{amqp_url}", prefix=prefix, token=TOKEN, timeout=5) as client:
        client.publish(b"{}", message_id="published")
        reply = client.read("some-id", message_id="sent")

    assert reply.extra == {"message_id": "sent", "distinct": 2}
    assert responder.wait_for(2) == ["published", "sent"]


def test_when_its_broker_dies_the_client_moves_to_the_next_of_the_list(
    amqp_url: str,
    prefix: str,
    proxy: Proxy,
    respond: Callable[[Hook], IdempotentResponder],
    quiet_logs: pytest.LogCaptureFixture,
) -> None:
    # The proxy is the broker in use; it dies between a publish and its confirm.
    responder = respond(when_first_seen("moved", proxy.shut))
    urls = f"{NO_BROKER}, {proxy.url}, {amqp_url}"
    with Client(urls, prefix=prefix, token=TOKEN, timeout=10) as client:
        client.publish(b"{}", message_id="warm-up")
        responder.wait_for(1)
        proxy.hold()

        client.publish(b"{}", message_id="moved")
        reply = client.read("some-id", message_id="still-there")

    assert responder.wait_for(4) == ["warm-up", "moved", "moved", "still-there"]
    assert reply.extra == {"message_id": "still-there", "distinct": 3}
    assert proxy.accepted == 1


# ---------------------------------------------------------------- no broker


def test_with_no_broker_publish_raises_connection_failed_within_the_timeout(
    prefix: str, quiet_logs: pytest.LogCaptureFixture
) -> None:
    with Client(NO_BROKER, prefix=prefix, token=TOKEN, timeout=1) as client:
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as raised:
            client.publish(b"{}", message_id="nowhere-1")

    assert 1 <= time.monotonic() - started < 2.5
    assert raised.value.message_id == "nowhere-1"
    message = str(raised.value)
    # One line that names the broker and why; the command never left, so it says
    # nothing of having maybe reached thelca.
    assert "no broker answered at 127.0.0.1:1 within 1 s (connection refused" in message
    assert "\n" not in message
    assert not raised.value.sent
    assert "may or may not" not in message
    assert TOKEN not in message


def test_with_no_broker_send_raises_connection_failed_within_its_timeout(
    prefix: str, quiet_logs: pytest.LogCaptureFixture
) -> None:
    with Client(NO_BROKER, prefix=prefix, token=TOKEN, timeout=30) as client:
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as raised:
            client.read("some-id", message_id="nowhere-2", timeout=0.5)

    assert 0.5 <= time.monotonic() - started < 2
    assert raised.value.message_id == "nowhere-2"
    assert "within 0.5 s" in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_a_send_whose_broker_went_away_raises_connection_failed_not_reply_timeout(
    prefix: str,
    proxy: Proxy,
    respond: Callable[[Hook], IdempotentResponder],
) -> None:
    respond(when_first_seen("orphan", proxy.shut))
    with Client(proxy.url, prefix=prefix, token=TOKEN, timeout=1) as client:
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as raised:
            client.read("some-id", message_id="orphan")

    assert 1 <= time.monotonic() - started < 2.5
    assert raised.value.message_id == "orphan"
