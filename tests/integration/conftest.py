"""Broker selection for the integration tests.

THELCA_TEST_AMQP_URL, else a broker on localhost:5672, else a RabbitMQ in a
testcontainers container when Docker answers; if none of these works the
tests fail (never skip) with a message saying how to get a broker.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import pika
import pika.exceptions
import pytest

from tests.idp import Idp
from thelca.amqp import thelca_topology
from thelca.authority.base import Principal
from thelca.authority.test_only import TestOnlyAuthority
from thelca.bootstrap import build_worker
from thelca.domain.model import Item
from thelca.errors import Forbidden
from thelca.settings import Settings
from thelca_client.contract import JSON, Names

LOCAL_URL = "amqp://guest:guest@localhost:5672/%2F"
HOW_TO_GET_A_BROKER = (
    "no RabbitMQ answered. Start one with `rabbitmq-server -detached` (Debian package "
    "rabbitmq-server), or `docker run -d -p 5672:5672 rabbitmq:3-management`, or set "
    "THELCA_TEST_AMQP_URL=amqp://user:pass@host:5672/%2F; with Docker running, the tests "
    "start a container themselves."
)


def _answers(url: str) -> bool:
    try:
        params = pika.URLParameters(url)
        params.connection_attempts = 1
        params.socket_timeout = 3
        pika.BlockingConnection(params).close()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    configured = os.environ.get("THELCA_TEST_AMQP_URL")
    if configured:
        if not _answers(configured):
            pytest.fail(f"THELCA_TEST_AMQP_URL does not answer: {HOW_TO_GET_A_BROKER}")
        yield configured
        return
    if _answers(LOCAL_URL):
        yield LOCAL_URL
        return
    yield from _container_url()


def _container_url() -> Iterator[str]:
    try:
        from testcontainers.rabbitmq import RabbitMqContainer

        container = RabbitMqContainer("rabbitmq:3.13-management")
        container.start()
    except Exception as error:
        pytest.fail(f"{HOW_TO_GET_A_BROKER} (Docker: {type(error).__name__}: {error})")
    try:
        params = container.get_connection_params()
        yield (
            f"amqp://guest:guest@{params.host}:{params.port}/%2F"
        )
    finally:
        container.stop()


@pytest.fixture
def prefix() -> str:
    """A prefix of its own for every test, so that runs never collide."""
    return f"test-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------- broker connections


def broker_connection_pids(name_part: str) -> list[str]:
    """The broker's pids of the connections whose connection_name contains name_part."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("these tests close connections from the broker's side with rabbitmqctl: "
                    "run them on the broker's machine, as root")
    listing = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "-q"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    pids = []
    for line in listing.splitlines():
        match = re.search(r'\{"connection_name","([^"]*)"\}', line)
        if match and name_part in match.group(1):
            pids.append(line.split("\t", 1)[0])
    return pids


def close_connections(name_part: str) -> int:
    """Have the broker close the connections named so, and only those; return how many."""
    pids = broker_connection_pids(name_part)
    for pid in pids:
        subprocess.run(["rabbitmqctl", "close_connection", pid, "a test closes it"],
                       capture_output=True, check=True, timeout=60)
    return len(pids)


# ---------------------------------------------------------------- the README's broker users

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[list[str]]:
    """The rabbitmqctl lines of the README's broker-users block."""
    block = README.read_text().split("<!-- broker-users:", 1)[1]
    code = block.split("```sh", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in code.strip().splitlines()]


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class BrokerUser:
    name: str
    url: str
    password: str


@contextmanager
def readme_users(amqp_url: str, prefix: str) -> Iterator[dict[str, BrokerUser]]:
    """The README's users for this prefix: {role: user}, deleted afterwards."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("this test creates broker users with rabbitmqctl: run it on the broker's "
                    "machine, as root")
    broker = urlparse(amqp_url)
    made: dict[str, BrokerUser] = {}
    try:
        for line in readme_commands():
            assert line[0] == "rabbitmqctl", line
            role = line[2 if line[1] == "add_user" else 4].removeprefix("thelca-")
            if line[1] == "add_user":
                name, password = f"{prefix}-{role}", "p" + secrets.token_hex(16)
                rabbitmqctl("add_user", name, password)
                url = f"amqp://{name}:{password}@{broker.hostname}:{broker.port or 5672}/%2F"
                made[role] = BrokerUser(name, url, password)
            else:
                assert line[1:4] == ["set_permissions", "-p", "/"], line
                # The prefix of the tests is letters, digits and dashes: literal in a regex.
                regexes = [r.replace(r"thelca\.", prefix + r"\.") for r in line[5:8]]
                assert len(regexes) == 3 and all(prefix in r or r in ("^$", r"^amq\.default$")
                                                 for r in regexes), line
                rabbitmqctl("set_permissions", "-p", "/", made[role].name, *regexes)
        assert set(made) == {"worker", "logger", "replay", "client", "operator"}
        yield made
    finally:
        for user in made.values():
            subprocess.run(["rabbitmqctl", "delete_user", user.name], capture_output=True,
                           timeout=60, check=False)


# ---------------------------------------------------------------- an in-process worker


class StandInAuthority(TestOnlyAuthority):
    """test-only, except that mallory may only create (no reads, updates or events), and
    `explode` in the properties of an item or a link to create breaks the worker."""

    def check_create_item(self, principal: Principal, dictionary: JSON) -> str:
        if (dictionary.get("properties") or {}).get("explode"):
            raise RuntimeError("the authority broke")
        return principal.user_id

    def check_read_item(self, principal: Principal, item: Item) -> str:
        self._refuse_mallory(principal)
        return principal.user_id

    def check_update_item(self, principal: Principal, current: Item, proposed: Item) -> str:
        self._refuse_mallory(principal)
        return principal.user_id

    def check_read_events(self, principal: Principal) -> str:
        if principal.user_id.endswith("mallory"):
            raise Forbidden("mallory may not read events")
        return principal.user_id

    def check_create_link(self, principal: Principal, dictionary: JSON) -> str:
        if (dictionary.get("properties") or {}).get("explode"):
            raise RuntimeError("the authority broke")
        return principal.user_id

    @staticmethod
    def _refuse_mallory(principal: Principal) -> None:
        if principal.user_id.endswith("mallory"):
            raise Forbidden("mallory may not touch items")


@contextmanager
def stand_in_worker(amqp_url: str, prefix: str, directory: Path) -> Iterator[Names]:
    """The real worker in a thread, with the StandInAuthority, for as long as the block."""
    settings = Settings(amqp_url=amqp_url, prefix=prefix, authority="test-only",
                        store=f"sqlite:///{directory / 'stand-in.db'}")
    role = build_worker(settings, authority=StandInAuthority())
    thread = threading.Thread(target=role.run, daemon=True)
    thread.start()
    try:
        wait_for_consumers(amqp_url, settings.names.commands, [])
        yield settings.names
    finally:
        role.stop()
        thread.join(timeout=30)


@pytest.fixture
def worker(amqp_url: str, prefix: str, tmp_path: Path) -> Iterator[Names]:
    """An in-process worker with the StandInAuthority; its prefix is deleted afterwards."""
    try:
        with stand_in_worker(amqp_url, prefix, tmp_path) as names:
            yield names
    finally:
        delete_prefix(amqp_url, prefix)


@pytest.fixture
def topology(amqp_url: str, prefix: str) -> Iterator[Names]:
    """The broker objects of a prefix, declared with thelca's own arguments, and no worker."""
    names = Names(prefix)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        declared = thelca_topology(names)
        for exchange in declared.fanout_exchanges:
            channel.exchange_declare(exchange, "fanout", durable=True)
        for queue in declared.queues:
            channel.queue_declare(queue.name, durable=True, arguments=queue.arguments)
            if queue.bind_to:
                channel.queue_bind(queue.name, queue.bind_to)
    finally:
        connection.close()
    try:
        yield names
    finally:
        delete_prefix(amqp_url, prefix)


def queue_depth(amqp_url: str, queue: str) -> int:
    """How many messages a queue holds ready (not counting unacked ones)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True)
                   .method.message_count)
    finally:
        connection.close()


# ---------------------------------------------------------------- the running system


@dataclass
class RunningSystem:
    """The real `thelca worker` and `thelca logger` processes on a prefix of their own."""

    amqp_url: str
    prefix: str
    directory: Path
    env: dict[str, str]
    role_env: dict[str, dict[str, str]] = field(default_factory=dict)  # per-role overrides
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def names(self) -> Names:
        return Names(self.prefix)

    @property
    def event_log(self) -> Path:
        return self.directory / "events.log"

    @property
    def store_path(self) -> Path:
        return self.directory / "thelca.db"

    def start(self, role: str) -> None:
        out = open(self.directory / f"{role}.out", "ab")  # noqa: SIM115 - child owns it
        self.processes[role] = subprocess.Popen(
            [sys.executable, "-m", "thelca", role], env={**self.env, **self.role_env.get(role, {})},
            stdout=out, stderr=out, cwd=self.directory,
        )
        out.close()

    def stop(self, role: str) -> int:
        process = self.processes.pop(role)
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def output(self) -> str:
        return "".join(
            (self.directory / f"{role}.out").read_text(errors="replace")
            for role in ("worker", "logger", "replay")
            if (self.directory / f"{role}.out").exists()
        )

    def log_lines(self) -> list[dict[str, Any]]:
        """The log's complete lines: the logger may be writing the last one right now."""
        if not self.event_log.exists():
            return []
        whole, _, _ = self.event_log.read_bytes().rpartition(b"\n")
        return [json.loads(line) for line in whole.splitlines() if line]

    def wait_for_log(
        self, condition: Callable[[list[dict[str, Any]]], bool], timeout: float = 10
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log_lines()
            if condition(lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def events_for(self, command_id: str, timeout: float = 10) -> list[dict[str, Any]]:
        lines = self.wait_for_log(
            lambda ls: any(line.get("command_id") == command_id for line in ls), timeout)
        return [line for line in lines if line.get("command_id") == command_id]


def wait_for_consumers(amqp_url: str, queue: str, processes: Sequence[subprocess.Popen[Any]],
                       timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"a thelca process exited early with {process.returncode}")
        try:
            connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
            try:
                frame = connection.channel().queue_declare(queue, passive=True)
                if frame.method.consumer_count > 0:
                    return
            finally:
                if connection.is_open:
                    connection.close()
        except pika.exceptions.AMQPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"nothing consumed {queue} within {timeout}s")


def queue_counts(amqp_url: str, queue: str) -> tuple[int, int]:
    """A queue's (messages ready, consumers), as the broker says them now."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        method = connection.channel().queue_declare(queue, passive=True).method
        return int(method.message_count), int(method.consumer_count)
    finally:
        if connection.is_open:
            connection.close()


def wait_for_count(system: RunningSystem, queue: str, count: int, timeout: float = 60) -> None:
    """Wait until `count` consumers consume `queue` (one `thelca worker --processes N` is N
    of them); fails with the processes' output if one of them exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        for role, process in system.processes.items():
            assert process.poll() is None, f"{role} exited early:\n{system.output()[-3000:]}"
        try:
            if queue_counts(system.amqp_url, queue)[1] >= count:
                return
        except pika.exceptions.ChannelClosedByBroker:
            pass  # not declared yet
        assert time.monotonic() < deadline, f"{queue} did not get {count} consumers"
        time.sleep(0.2)


def run_workers(amqp_url: str, prefix: str, directory: Path, store_url: str, workers: int,
                **env: str) -> Iterator[RunningSystem]:
    """`thelca worker --processes N` on store_url, then a logger, each once it consumes;
    stopped and cleaned up after (for a fixture to yield from)."""
    running = RunningSystem(amqp_url, prefix, directory, system_env(
        amqp_url, prefix, directory, THELCA_STORE=store_url, THELCA_PROCESSES=str(workers),
        **env))
    try:
        running.start("worker")
        wait_for_count(running, running.names.commands, workers)
        running.start("logger")
        wait_for_count(running, running.names.events_log, 1)
        yield running
    finally:
        for role in list(running.processes):
            running.stop(role)
        delete_prefix(amqp_url, prefix)


def delete_prefix(amqp_url: str, prefix: str) -> None:
    names = Names(prefix)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        for queue in (names.commands, names.events_log, names.dead, names.replay):
            channel = connection.channel()
            channel.queue_delete(queue)
        channel = connection.channel()
        for exchange in (names.events, names.dead, names.checkpoints):
            channel.exchange_delete(exchange)
    finally:
        connection.close()


def system_env(amqp_url: str, prefix: str, directory: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THELCA_")}
    env.update(
        THELCA_AMQP_URL=amqp_url,
        THELCA_PREFIX=prefix,
        THELCA_STORE=f"sqlite:///{directory / 'thelca.db'}",
        THELCA_EVENT_LOG=str(directory / "events.log"),
        THELCA_AUTHORITY="test-only",
        THELCA_LOG_LEVEL="DEBUG",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.fixture
def system(amqp_url: str, prefix: str, tmp_path: Path) -> Iterator[RunningSystem]:
    """A worker and a logger as real subprocesses, stopped and cleaned up afterwards."""
    yield from _running_system(amqp_url, prefix, tmp_path)


@pytest.fixture(scope="module")
def shared_system(
    amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    """One system for a whole module of tests that do not disturb each other."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    yield from _running_system(amqp_url, prefix, tmp_path_factory.mktemp(prefix))


@dataclass
class JwtSystem(RunningSystem):
    """A running system whose worker uses the jwt Authority with the keys of `idp`."""

    idp: Idp = field(default_factory=lambda: Idp(Path()))
    sent_tokens: list[str] = field(default_factory=list)


@pytest.fixture
def jwt_system(amqp_url: str, prefix: str, tmp_path: Path) -> Iterator[JwtSystem]:
    """Worker and logger subprocesses with THELCA_AUTHORITY=jwt and a JWKS file in tmp_path."""
    yield from _running_jwt_system(amqp_url, prefix, tmp_path)


@pytest.fixture(scope="module")
def shared_jwt_system(
    amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JwtSystem]:
    """One jwt system for a module of tests that do not change its keys."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    yield from _running_jwt_system(amqp_url, prefix, tmp_path_factory.mktemp(prefix))


def _running_jwt_system(amqp_url: str, prefix: str, directory: Path) -> Iterator[JwtSystem]:
    idp = Idp.create(directory / "idp")
    running = JwtSystem(amqp_url, prefix, directory,
                        system_env(amqp_url, prefix, directory, **idp.env()), idp=idp)
    yield from run_prepared(running)


def _running_system(
    amqp_url: str, prefix: str, directory: Path, *, env: dict[str, str] | None = None,
    roles: Sequence[str] = ("worker", "logger"),
) -> Iterator[RunningSystem]:
    running = RunningSystem(amqp_url, prefix, directory,
                            env or system_env(amqp_url, prefix, directory))
    yield from run_prepared(running, roles)


System = TypeVar("System", bound=RunningSystem)


@contextmanager
def run_system(
    amqp_url: str, prefix: str, directory: Path, **env: str
) -> Iterator[RunningSystem]:
    """A worker and a logger with extra environment (THELCA_* settings), for a test's own use."""
    yield from run_prepared(RunningSystem(amqp_url, prefix, directory,
                                          system_env(amqp_url, prefix, directory, **env)))


def run_prepared(
    running: System, roles: Sequence[str] = ("worker", "logger")
) -> Iterator[System]:
    """Start the roles of a prepared system, each once it consumes; stop and clean up after."""
    queues = {"worker": running.names.commands, "logger": running.names.events_log,
              "replay": running.names.replay}
    try:
        for role in roles:
            running.start(role)
            wait_for_consumers(running.amqp_url, queues[role], [running.processes[role]])
        yield running
    finally:
        for role in list(running.processes):
            running.stop(role)
        delete_prefix(running.amqp_url, running.prefix)
