"""A worker stuck on a batch that keeps failing is not called healthy.

Another session holds PostgreSQL's tables locked (as a migration or an
operator's long transaction would), and the worker's store gives up waiting
after lock_timeout: every attempt at the batch fails. After five failures in
a row the worker stops consuming, so `thelca health` fails and says a stuck
batch may be why, while the metrics count the retries; once the lock goes,
the batch goes through and the worker consumes (and is healthy) again.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from tests.integration.conftest import RunningSystem, run_prepared, system_env
from tests.integration.plain import PlainClient
from tests.postgres import fresh_schema, postgres_url, with_schema

pytestmark = pytest.mark.broker


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("role") == "worker":
                return float(sample.value)
    return 0.0


def _health(system: RunningSystem) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thelca", "health"], env=system.env,
                          capture_output=True, text=True, timeout=60, check=False)


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout}s")
        time.sleep(0.2)


def test_health_fails_while_a_batch_keeps_failing_and_recovers_after(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    url = postgres_url()
    port = _free_port()
    with fresh_schema(url) as schema:
        # libpq does not decode + as a space, so the options are quoted by hand.
        store = f"{with_schema(url, schema)}&options=-c%20lock_timeout%3D200"
        running = RunningSystem(amqp_url, prefix, tmp_path,
                                system_env(amqp_url, prefix, tmp_path, THELCA_STORE=store),
                                role_env={"worker": {"THELCA_METRICS_PORT": str(port)}})
        systems = run_prepared(running)
        system = next(systems)
        client = PlainClient(amqp_url, prefix)
        try:
            assert _health(system).returncode == 0
            with psycopg.connect(url) as locker:  # one transaction, held until rolled back
                locker.execute(sql.SQL("LOCK TABLE {}, {}, {} IN ACCESS EXCLUSIVE MODE").format(
                    *(sql.Identifier(schema, table) for table in ("items", "processed", "outbox"))))
                message_id = client.publish({"command": "create"}, token="stuck")
                _until(lambda: "stuck batch" in system.output(), 60, "stuck")
                health = _health(system)
                assert health.returncode == 3, health.stdout
                assert "worker: FAILED (stuck batch" in health.stdout
                print(f"\nhealth while stuck (exit {health.returncode}):\n{health.stdout}")
                assert _metric(port, "thelca_batch_retries_total") >= 5
                assert _metric(port, "thelca_batch_stuck") == 1
                assert _metric(port, "thelca_consuming") == 0
                locker.rollback()
            (event,) = system.events_for(message_id, timeout=60)
            assert event["type"] == "Item created"
            _until(lambda: _health(system).returncode == 0, 30, "healthy again")
            assert _metric(port, "thelca_batch_stuck") == 0
            assert _metric(port, "thelca_consuming") == 1
            assert client.send({"command": "create"}).status == 200
        finally:
            client.close()
            next(systems, None)
