"""Where to connect and how to keep connecting: broker URLs, and the reconnect loop.

A Reconnecting consumer runs one session (one connection) after another
until it is stopped, with backoff between attempts; a session's state dies
with it, and whatever it had not acked the broker delivers again.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any, Protocol

import pika
import pika.connection

from thelca.amqp.topology import SETUP_REFUSALS, Topology
from thelca.errors import ConfigurationError
from thelca_client.tls import TlsFiles, apply_tls


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


def broker_login(params: pika.connection.Parameters) -> str | None:
    """The broker user a connection logs in as; None for a certificate (EXTERNAL) login.

    Set as a message's `user_id`, the broker checks it against the login and
    refuses a publish that claims another: a consumer can tell who published.
    """
    username = getattr(params.credentials, "username", None)
    return username if isinstance(username, str) and username else None


def safe_url(url: str) -> str:
    """A broker URL fit for a log line: the password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


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
        """Whether stop() (or fail()) was called."""
        return self._stopping.is_set()


class SessionLike(Protocol):
    """What the reconnect loop needs of a session: run it, stop it, and whether it consumed."""

    consumed: bool

    def run(self) -> None: ...

    def request_stop(self) -> None: ...


def refusal(owner: Reconnecting, consumed: bool, reason: Any) -> None:
    """Stop the owner for good when the broker refused a declaration no retry can cure."""
    code = getattr(reason, "reply_code", None)
    if not consumed and code in SETUP_REFUSALS:
        owner.fail(ConfigurationError(
            f"{owner.name}: the broker refused thelca's broker objects: "
            f"{reason.reply_text}. {SETUP_REFUSALS[code]}"))
