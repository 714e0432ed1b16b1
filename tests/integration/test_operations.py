"""What operators see: Prometheus metrics and JSON logs from the real processes."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import RunningSystem, run_prepared, system_env
from tests.integration.plain import PlainClient

pytestmark = pytest.mark.broker


def _free_port_pair() -> int:
    """A port p such that p and p + 1 are free now (worker and logger under `run`)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two free ports in a row")


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
def observed(amqp_url: str, prefix: str, tmp_path: Path) -> Iterator[tuple[RunningSystem, int]]:
    """A system with JSON logs, the worker's metrics on a port and the logger's on the next."""
    port = _free_port_pair()
    running = RunningSystem(
        amqp_url, prefix, tmp_path, system_env(amqp_url, prefix, tmp_path,
                                               THELCA_LOG_FORMAT="json"),
        role_env={"worker": {"THELCA_METRICS_PORT": str(port)},
                  "logger": {"THELCA_METRICS_PORT": str(port + 1)}})
    systems = run_prepared(running)
    yield next(systems), port
    next(systems, None)


def test_metrics_count_commands_events_log_lines_and_fsyncs(
    observed: tuple[RunningSystem, int],
) -> None:
    system, port = observed
    client = PlainClient(system.amqp_url, system.prefix)
    try:
        for _ in range(5):
            assert client.send({"command": "create"}).status == 200
        assert client.send({"command": "read", "id": "nope"}).status == 404
        assert client.send({"command": "create"}, token="BAAD").status == 401
    finally:
        client.close()
    system.wait_for_log(lambda lines: len(lines) >= 6)
    worker = _scrape(port)
    assert worker[("thelca_commands_total", (("command", "create"), ("status", "200")))] == 5
    assert worker[("thelca_commands_total", (("command", "read"), ("status", "404")))] == 1
    assert worker[("thelca_commands_total", (("command", "create"), ("status", "401")))] == 1
    assert worker[("thelca_consuming", (("role", "worker"),))] == 1
    assert worker[("thelca_delivery_seconds_count", (("role", "worker"),))] == 7
    assert worker[("thelca_published_total",
                   (("exchange", f"{system.prefix}.events"), ("role", "worker")))] == 6
    assert worker[("thelca_published_total", (("exchange", "(default)"), ("role", "worker")))] == 7
    logger = _scrape(port + 1)
    assert logger[("thelca_log_lines_total", ())] == 6
    assert logger[("thelca_log_fsync_seconds_count", ())] >= 1
    assert logger[("thelca_consuming", (("role", "logger"),))] == 1


def test_json_logs_are_one_object_per_line_and_hold_no_token(
    observed: tuple[RunningSystem, int],
) -> None:
    system, _ = observed
    client = PlainClient(system.amqp_url, system.prefix)
    try:
        client.send({"command": "create"}, token="BAAD")
    finally:
        client.close()
    system.wait_for_log(lambda lines: len(lines) >= 1)
    lines = [line for line in system.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any("consuming" in record["message"] for record in records)
    assert "Bearer" not in system.output()
