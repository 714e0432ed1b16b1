"""Issue 10, the logger's side: the audit trail against an attacker, on the real broker
with real broker users (the worker's side is test_audit_trail_attacks.py).

Each attack is made as a broker user created here for the test (deleted
afterwards): a client with exactly the README's client permissions forging an
event straight onto the log's queue, a rogue user allowed to write the events
exchange, line breaks in properties. Then the honest path: the live log, with
its chain and signed checkpoints, passes `thelca audit`, the checkpoints reach
a witness (the README's own witness script, as the README's witness user), and
the witness's copy catches a log whose chain was recomputed and re-signed on
the log's host.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
import pika
import pika.exceptions
import pytest

from tests.integration.conftest import (
    RunningSystem,
    queue_depth,
    run_prepared,
    system_env,
    wait_for_consumers,
)
from thelca.audit.chain import Chain
from thelca.audit.checkpoints import CheckpointWriter, checkpoints_path, load_signing_key
from thelca.restore import restore
from thelca.stores.memory import MemoryStore
from thelca_client import Client
from thelca_client.contract import DEAD_REASON_HEADER, Names

pytestmark = pytest.mark.broker

README = Path(__file__).resolve().parents[2] / "README.md"
PRECONDITION_FAILED = 406
BREAKS = "\u2028\u2029\x85"


# ---------------------------------------------------------------- helpers


def readme_block(marker: str) -> str:
    """The code block that follows `<!-- marker:` in the README."""
    after = README.read_text().split(f"<!-- {marker}:", 1)[1]
    fence = after.split("```", 2)
    return fence[1].split("\n", 1)[1]


@contextmanager
def broker_user(amqp_url: str, name: str, *permissions: str) -> Iterator[str]:
    """A broker user with these configure, write and read permissions: its URL."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("this test creates broker users with rabbitmqctl: run it on the broker's "
                    "machine, as root")
    password = "p" + secrets.token_hex(16)
    _rabbitmqctl("add_user", name, password)
    try:
        _rabbitmqctl("set_permissions", "-p", "/", name, *permissions)
        broker = urlparse(amqp_url)
        yield f"amqp://{name}:{password}@{broker.hostname}:{broker.port or 5672}/%2F"
    finally:
        subprocess.run(["rabbitmqctl", "delete_user", name], capture_output=True, timeout=60,
                       check=False)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def metric(port: int, name: str) -> float:
    """A sample of the logger's /metrics (0 when it has none yet)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@contextmanager
def audited_system(amqp_url: str, prefix: str, directory: Path,
                   logger: dict[str, str]) -> Iterator[RunningSystem]:
    """A worker and a logger; `logger` is the logger's own environment (key, publishers)."""
    running = RunningSystem(amqp_url, prefix, directory,
                            system_env(amqp_url, prefix, directory), role_env={"logger": logger})
    yield from run_prepared(running)


def forged_event(**value: Any) -> dict[str, Any]:
    """An `Item created` event as the worker would write it, for an item nobody created."""
    return {"time": "2026-03-01T12:00:00.000000+00:00", "type": "Item created",
            "user": "alice", "value": {"id": str(uuid.uuid4()),
                                       "created_at": "2026-03-01T12:00:00.000000+00:00",
                                       "created_by": "alice", "properties": value},
            "id": str(uuid.uuid4()), "command_id": "never-sent", "version": 1}


def publish(url: str, exchange: str, routing_key: str, body: dict[str, Any],
            properties: pika.BasicProperties) -> None:
    """Publish as the user of `url`, mandatory and confirmed, as an attacker's script would."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, routing_key, json.dumps(body).encode(), properties,
                              mandatory=True)
    finally:
        if connection.is_open:
            connection.close()


def dead_letters(amqp_url: str, names: Names, count: int,
                 timeout: float = 20) -> list[tuple[pika.BasicProperties, dict[str, Any]]]:
    """The first `count` dead letters, taken off `<prefix>.dead` once they are all there."""
    deadline = time.monotonic() + timeout
    while queue_depth(amqp_url, names.dead) < count:
        assert time.monotonic() < deadline, f"{names.dead} never held {count} dead letters"
        time.sleep(0.05)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        letters = []
        for _ in range(count):
            method, properties, body = channel.basic_get(names.dead, auto_ack=True)
            assert method is not None and properties is not None and body is not None
            letters.append((properties, json.loads(body)))
        return letters
    finally:
        connection.close()


def honest_create(system: RunningSystem, properties: dict[str, Any]) -> str:
    """A create through the worker, as guest; its event's command_id, once it is in the log."""
    message_id = str(uuid.uuid4())
    with Client(system.amqp_url, prefix=system.prefix, token="abcd") as client:
        client.create(properties, message_id=message_id)
    assert system.events_for(message_id, timeout=30), "the worker's event never reached the log"
    return message_id


def thelca(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thelca", *args], text=True,
                          capture_output=True, timeout=120, check=False, env=env)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


# ---------------------------------------------------------------- attacks


def test_an_event_put_straight_on_the_log_queue_is_dead_lettered_not_written(
    amqp_url: str, prefix: str, tmp_path: Path,
) -> None:
    names, port = Names(prefix), free_port()
    # The README's client permissions: write to the default exchange, nothing else.
    with broker_user(amqp_url, f"{prefix}-client", "^$", r"^amq\.default$", "^$") as attacker, \
            audited_system(amqp_url, prefix, tmp_path,
                           {"THELCA_METRICS_PORT": str(port)}) as system:
        forged = forged_event(forged=True)
        publish(attacker, "", names.events_log, forged, pika.BasicProperties(
            message_id="forged\n2026-03-01 WARNING thelca: a line of my own\u2028",
            headers={"Authorization": "Bearer stolen-token"}, delivery_mode=2))
        honest = honest_create(system, {"type": "STORY"})
        [(properties, body)] = dead_letters(amqp_url, names, 1)
        wait_for(lambda: metric(port, 'thelca_log_rejected_total{reason="exchange"}') == 1,
                 "the rejection counted")
    assert body == forged
    headers = properties.headers or {}
    assert "Authorization" not in headers and "stolen-token" not in json.dumps(headers)
    assert headers[DEAD_REASON_HEADER] == (
        f"logger: not published through {names.events} (it came straight to the queue, "
        "through the default exchange): only the worker's events are written")
    lines = system.log_lines()
    assert [line["command_id"] for line in lines] == [honest]
    assert forged["id"] not in {line["id"] for line in lines}
    store = MemoryStore()
    restore(system.event_log, store)
    assert [s.item.properties for s in store.items()] == [{"type": "STORY"}]
    out = system.output()
    assert "stolen-token" not in out
    assert "'forged\\n2026-03-01 WARNING thelca: a line of my own\\u2028'" in out
    assert not any(line.startswith("2026-03-01 WARNING") for line in out.splitlines())
    assert "THELCA_LOG_SIGNING_KEY is unset" in out  # the logger warned at start


def test_a_rogue_publisher_on_the_events_exchange_is_refused_with_event_publishers(
    amqp_url: str, prefix: str, tmp_path: Path,
) -> None:
    names = Names(prefix)
    worker_user = urlparse(amqp_url).username or "guest"  # the worker runs as this user
    rogue_name = f"{prefix}-rogue"
    with broker_user(amqp_url, rogue_name, "^$", rf"^{re.escape(names.events)}$",
                     "^$") as rogue, \
            audited_system(amqp_url, prefix, tmp_path,
                           {"THELCA_EVENT_PUBLISHERS": f"someone-else,{worker_user}"}) as system:
        no_user_id, own_user_id = forged_event(n=1), forged_event(n=2)
        publish(rogue, names.events, "", no_user_id, pika.BasicProperties(delivery_mode=2))
        publish(rogue, names.events, "", own_user_id,
                pika.BasicProperties(user_id=rogue_name, delivery_mode=2))
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            publish(rogue, names.events, "", forged_event(n=3),
                    pika.BasicProperties(user_id=worker_user, delivery_mode=2))
        assert refused.value.reply_code == PRECONDITION_FAILED  # the broker checks user_id
        honest = honest_create(system, {"type": "BUG"})
        letters = dead_letters(amqp_url, names, 2)
    reasons = sorted((body["value"]["properties"]["n"], (properties.headers or {})[
        DEAD_REASON_HEADER]) for properties, body in letters)
    assert reasons == [
        (1, "logger: published with no user_id, which is not one of the event publishers "
            "(THELCA_EVENT_PUBLISHERS)"),
        (2, f"logger: published with user_id {rogue_name!r}, which is not one of the event "
            "publishers (THELCA_EVENT_PUBLISHERS)")]
    assert [line["command_id"] for line in system.log_lines()] == [honest]
    assert f"user_id {rogue_name!r}" in system.output()


def test_line_breaks_in_properties_leave_one_event_per_line_for_any_reader(
    system: RunningSystem,
) -> None:
    properties = {f"note{BREAKS}": f"one{BREAKS}two\nthree\r\x0b\x0c\x1c\x1d\x1e"}
    with Client(system.amqp_url, prefix=system.prefix, token=f"abcd{BREAKS}") as client:
        item = client.create(properties).item
        assert item is not None and item["properties"] == properties
        assert client.read(str(item["id"])).item == item
        client.update(str(item["id"]), {**item, "properties": {"again": BREAKS}})
    lines = system.wait_for_log(lambda ls: len(ls) >= 3)
    text = system.event_log.read_bytes().decode()
    assert len(text.splitlines()) == text.count("\n") == len(lines) == 3
    assert [json.loads(line)["type"] for line in text.splitlines()] == [
        "Item created", "Item read", "Item updated"]
    assert lines[0]["value"]["properties"] == properties  # the same value, escaped
    assert "\u2028" not in text and "\u2029" not in text and "\x85" not in text


# ---------------------------------------------------------------- the honest log, audited


def recompute_chain(log: Path, number: int, edit: Callable[[dict[str, Any]], None]) -> None:
    """What an attacker with the log's host does: edit line `number`, then relink every line."""
    chain = Chain()
    out = []
    for n, raw in enumerate(log.read_bytes().splitlines(), 1):
        event = orjson.loads(raw)
        del event["prev"]
        if n == number:
            edit(event)
        out.append(chain.link(orjson.dumps(event) + b"\n"))
    log.write_bytes(b"".join(out))


def test_the_live_log_audits_and_a_witness_catches_a_chain_recomputed_on_the_logs_host(
    amqp_url: str, prefix: str, tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    assert thelca("dev-keys", "--dir", str(keys)).returncode == 0
    signing, public = keys / "log-signing.pem", keys / "log-signing.pub.pem"
    witness_queue = f"{prefix}.checkpoints.witness"
    witness_file = tmp_path / "witness" / "witness.checkpoints"
    witness_file.parent.mkdir()
    script = tmp_path / "witness" / "witness.py"
    script.write_text(readme_block("witness"))
    lines = [shlex.split(line) for line in readme_block("witness-user").strip().splitlines()]
    assert [line[:2] for line in lines] == [["rabbitmqctl", "add_user"],
                                            ["rabbitmqctl", "set_permissions"]]
    permissions = [p.replace(r"thelca\.", re.escape(prefix) + r"\.") for p in lines[1][5:8]]
    try:
        with broker_user(amqp_url, f"{prefix}-witness", *permissions) as witness_url, \
                audited_system(amqp_url, prefix, tmp_path,
                               {"THELCA_LOG_SIGNING_KEY": str(signing)}) as system:
            witness = subprocess.Popen(
                [sys.executable, str(script)], cwd=witness_file.parent,
                env={**os.environ, "WITNESS_AMQP_URL": witness_url, "THELCA_PREFIX": prefix,
                     "WITNESS_FILE": str(witness_file)},
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                wait_for_consumers(amqp_url, witness_queue, [witness])
                for n in range(20):
                    honest_create(system, {"n": n})
                # traffic stops: a checkpoint still comes within 10 seconds, while running
                wait_for(lambda: witness_file.exists() and witness_file.read_bytes().count(
                    b"\n") >= 1, "a checkpoint at the witness while the logger runs")
                for n in range(20, 25):
                    honest_create(system, {"n": n})
                system.stop("worker")
                assert system.stop("logger") == 0  # its last checkpoint, confirmed
                logged = len(system.log_lines())
                wait_for(lambda: json.loads(witness_file.read_bytes().splitlines()[-1])[
                    "lines"] == logged, "the stop's checkpoint at the witness")
            finally:
                witness.terminate()
                witness.wait(timeout=30)
        log = system.event_log
        audited = thelca("audit", "--log", str(log), "--public-key", str(public))
        assert audited.returncode == 0, audited.stdout + audited.stderr
        assert f"{logged} lines checked" in audited.stdout and "intact" in audited.stdout
        assert f"line {logged} " in audited.stdout  # the last checkpoint covers every line
        held = thelca("audit", "--log", str(log), "--checkpoints", str(witness_file),
                      "--public-key", str(public))
        assert held.returncode == 0, held.stdout + held.stderr
        print(f"\n$ thelca audit --log ... --public-key ...\n{audited.stdout}"
              f"$ thelca audit --log ... --checkpoints witness.checkpoints ...\n{held.stdout}")

        # On the log's host, with its signing key: an item's history changed, the chain
        # recomputed, the host's checkpoints rewritten and signed again.
        recompute_chain(log, 3, lambda event: event["value"]["properties"].update(n=999))
        local = checkpoints_path(log)
        local.unlink()
        forger = CheckpointWriter(local, load_signing_key(signing))
        forger.write(logged, Chain.resume(log).last)
        forger.close()
        on_host = thelca("audit", "--log", str(log), "--public-key", str(public))
        assert on_host.returncode == 0  # nothing on the host can tell
        caught = thelca("audit", "--log", str(log), "--checkpoints", str(witness_file),
                        "--public-key", str(public))
        assert caught.returncode == 1, caught.stdout
        assert "no longer matches this checkpoint" in caught.stdout
        print(f"after the chain was recomputed and re-signed on the log's host:\n"
              f"  the host's checkpoints: exit {on_host.returncode}\n"
              f"  the witness's: exit {caught.returncode}\n{caught.stdout}")
    finally:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            connection.channel().queue_delete(witness_queue)
        finally:
            connection.close()


def test_a_logger_killed_while_it_writes_leaves_a_log_that_audits(
    amqp_url: str, prefix: str, tmp_path: Path,
) -> None:
    """SIGKILL while events flow: a torn tail is set aside, the chain goes on from the last
    complete line, and the log audits."""
    keys = tmp_path / "keys"
    assert thelca("dev-keys", "--dir", str(keys)).returncode == 0
    sent: list[str] = []

    def produce() -> None:
        with Client(amqp_url, prefix=prefix, token="abcd") as client:
            sent.extend(client.create_async({"n": n}) for n in range(1500))

    with audited_system(amqp_url, prefix, tmp_path, {
            "THELCA_LOG_SIGNING_KEY": str(keys / "log-signing.pem"),
            "THELCA_PREFETCH": "20"}) as system:
        producer = threading.Thread(target=produce)
        producer.start()
        try:
            system.wait_for_log(lambda lines: len(lines) >= 50, timeout=30)
            logger = system.processes.pop("logger")
            logger.kill()  # the producer is still sending
            logger.wait()
            killed_at = len(system.log_lines())
            system.start("logger")
            wait_for_consumers(amqp_url, system.names.events_log, [system.processes["logger"]])
        finally:
            producer.join(timeout=120)
        lines = system.wait_for_log(
            lambda ls: set(sent) <= {line["command_id"] for line in ls}, timeout=60)
        assert system.stop("logger") == 0
    assert killed_at < len(sent) == 1500
    assert sorted(line["command_id"] for line in lines) == sorted(sent)  # each once
    audited = thelca("audit", "--log", str(system.event_log),
                     "--public-key", str(keys / "log-signing.pub.pem"))
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert f"the last matched: line {len(sent)} " in audited.stdout
