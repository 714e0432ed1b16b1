"""The `thelca` command as a user runs it: real processes, real broker, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import (
    RunningSystem,
    delete_prefix,
    system_env,
    wait_for_consumers,
)
from thelca.amqp import queue_consumers

pytestmark = pytest.mark.broker


def thelca(*args: str, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thelca", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


@pytest.mark.parametrize(
    "command",
    [[], ["worker"], ["logger"], ["replay"], ["run"], ["health"], ["publish"],
     ["publish", "create"], ["publish", "read"], ["publish", "update"], ["dev-keys"],
     ["dev-token"], ["restore"], ["verify"], ["audit"]],
)
def test_help_answers(command: list[str]) -> None:
    result = thelca(*command, "--help")
    assert result.returncode == 0
    assert "usage: thelca" in result.stdout
    if command and command[0] in ("worker", "replay", "run"):
        assert "THELCA_AUTHORITY" in result.stdout
        assert "THELCA_AMQP_URL" in result.stdout
        for variable in ("THELCA_JWKS", "THELCA_JWT_KEY_FILE", "THELCA_JWT_ALGORITHMS",
                         "THELCA_JWT_ISSUER", "THELCA_JWT_AUDIENCE", "THELCA_JWT_LEEWAY",
                         "THELCA_AMQP_CA_FILE", "THELCA_AMQP_CERT_FILE", "THELCA_AMQP_KEY_FILE"):
            assert variable in result.stdout


def test_help_never_shows_a_password_from_the_environment() -> None:
    env = {**os.environ, "THELCA_AMQP_URL": "amqp://user:hunter2@localhost:5672/%2F"}
    assert "hunter2" not in thelca("worker", "--help", env=env).stdout


def test_the_worker_refuses_to_start_without_an_authority(amqp_url: str, tmp_path: Path) -> None:
    env = system_env(amqp_url, "never-started", tmp_path)
    del env["THELCA_AUTHORITY"]
    result = thelca("worker", env=env, timeout=30)
    assert result.returncode != 0
    assert "THELCA_AUTHORITY" in result.stderr


def test_an_unknown_authority_is_refused(amqp_url: str, tmp_path: Path) -> None:
    env = system_env(amqp_url, "never-started", tmp_path, THELCA_AUTHORITY="trust-me")
    result = thelca("worker", env=env, timeout=30)
    assert result.returncode != 0
    assert "trust-me" in result.stderr and "test-only" in result.stderr


def test_the_worker_says_in_its_log_that_it_runs_test_only(system: RunningSystem) -> None:
    assert "test-only" in system.output()
    assert "never in production" in system.output()


def test_publish_create_then_read_as_the_issue_describes(system: RunningSystem) -> None:
    env = system.env
    created = thelca("publish", "create", "--token", "abcd", "--properties",
                     '{"type": "STORY"}', env=env)
    assert created.returncode == 0, created.stderr
    reply = json.loads(created.stdout)
    assert reply["status"] == 200 and reply["version"] == 1
    item = reply["item"]
    assert item["properties"] == {"type": "STORY"}
    assert item["created_by"] == "a-test-only-id-abcd"

    read = thelca("publish", "read", "--id", item["id"], env={**env, "THELCA_TOKEN": "abcd"})
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["item"] == item

    lines = system.wait_for_log(lambda ls: len(ls) >= 2)
    assert [line["type"] for line in lines] == ["Item created", "Item read"]
    assert lines[0]["value"] == item and lines[1]["value"] == item["id"]
    everything = system.output() + system.event_log.read_text() + created.stderr + read.stderr
    assert "Bearer" not in everything


def test_publish_update_with_properties_reads_then_updates_at_that_version(
    system: RunningSystem,
) -> None:
    env = {**system.env, "THELCA_TOKEN": "abcd"}
    item = json.loads(thelca("publish", "create", env=env).stdout)["item"]
    updated = thelca("publish", "update", "--id", item["id"], "--properties", '{"n": 2}',
                     env=env)
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["version"] == 2
    stale = thelca("publish", "update", "--id", item["id"], "--item", json.dumps(item),
                   "--expected-version", "1", env=env)
    assert stale.returncode == 1
    assert json.loads(stale.stdout)["status"] == 409


def test_publish_exits_non_zero_on_any_status_but_200(system: RunningSystem) -> None:
    env = {**system.env, "THELCA_TOKEN": "abcd"}
    missing = thelca("publish", "read", "--id", "no-such-item", env=env)
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["status"] == 404
    refused = thelca("publish", "create", "--token", "BAAD", env=system.env)
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["status"] == 401
    gone = thelca("publish", "update", "--id", "no-such-item", "--properties", "{}", env=env)
    assert gone.returncode == 1
    assert json.loads(gone.stdout)["status"] == 404


def test_publish_without_a_token_or_with_bad_json_is_a_usage_error(
    system: RunningSystem,
) -> None:
    assert thelca("publish", "create", env=system.env).returncode == 2
    bad = thelca("publish", "create", "--token", "abcd", "--properties", "{nope",
                 env=system.env)
    assert bad.returncode == 2
    assert "--properties" in bad.stderr


def test_publish_no_wait_is_fire_and_forget(system: RunningSystem) -> None:
    result = thelca("publish", "create", "--token", "abcd", "--no-wait", env=system.env)
    assert result.returncode == 0
    message_id = json.loads(result.stdout)["message_id"]
    (event,) = system.events_for(message_id)
    assert event["type"] == "Item created"


def into_a_closed_pipe(*args: str, env: dict[str, str] | None = None,
                       buffered: bool = True) -> tuple[int, str]:
    """Run thelca with its stdout a real pipe whose reader is gone, as `| head` leaves it
    once it has read what it wanted: (exit status, stderr). The reader is closed before
    the command starts, so its output meets the closed pipe every time: when it writes
    (unbuffered) or, as in a user's shell, when the buffer is flushed (buffered)."""
    env = dict(os.environ if env is None else env)
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "thelca", *args], env=env, text=True,
                                stdout=write_end, stderr=subprocess.PIPE, timeout=60,
                                check=False)
    finally:
        os.close(write_end)
    return result.returncode, result.stderr


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_publish_into_a_closed_pipe_exits_141_without_a_traceback(
    system: RunningSystem, buffered: bool
) -> None:
    env = {**system.env, "THELCA_TOKEN": "abcd"}
    status, stderr = into_a_closed_pipe("publish", "read", "--id", "no-such-item", env=env,
                                        buffered=buffered)
    assert (status, stderr) == (141, "")


def test_help_into_a_closed_pipe_exits_141_without_a_traceback() -> None:
    """argparse prints the help and exits itself: the buffer meets the closed pipe on the
    way out. (Unbuffered, argparse drops the failed write itself and exits 0.)"""
    status, stderr = into_a_closed_pipe("publish", "--help")
    assert (status, stderr) == (141, "")


def test_publish_to_a_prefix_with_no_worker_fails_clearly(amqp_url: str, tmp_path: Path) -> None:
    env = system_env(amqp_url, f"nobody-{uuid.uuid4().hex[:8]}", tmp_path, THELCA_TOKEN="abcd")
    result = thelca("publish", "create", env=env)
    assert result.returncode == 3
    assert "worker" in result.stderr


def test_health_is_0_with_broker_worker_and_store_and_3_without(
    system: RunningSystem,
) -> None:
    ok = thelca("health", env=system.env)
    assert ok.returncode == 0, ok.stdout
    assert "worker: ok (1 consuming" in ok.stdout
    assert "logger: ok (1 consuming" in ok.stdout
    assert "dedup window: 604800 s (7.0 days); no processed-command record" in ok.stdout
    broken = thelca("health", env={**system.env,
                                   "THELCA_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F"})
    assert broken.returncode == 3
    assert "broker: FAILED" in broken.stdout
    no_store = thelca("health", env={**system.env, "THELCA_STORE": "sqlite:///nowhere/x.db"})
    assert no_store.returncode == 3
    assert "store: FAILED" in no_store.stdout
    assert system.stop("worker") == 0
    no_worker = thelca("health", env=system.env)
    assert no_worker.returncode == 3
    assert "worker: FAILED (nothing consumes" in no_worker.stdout


def test_a_second_worker_on_the_same_sqlite_file_refuses_to_start(
    system: RunningSystem,
) -> None:
    result = thelca("worker", env=system.env, timeout=30)
    assert result.returncode != 0
    assert "already open for writing" in result.stderr


def test_run_starts_worker_logger_and_replay_and_stops_them_on_sigterm(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    env = system_env(amqp_url, prefix, tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "thelca", "run"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_consumers(amqp_url, f"{prefix}.commands", [process])
        wait_for_consumers(amqp_url, f"{prefix}.events.log", [process])
        wait_for_consumers(amqp_url, f"{prefix}.replay", [process])
        created = thelca("publish", "create", "--token", "abcd", env=env)
        assert created.returncode == 0
        deadline = time.monotonic() + 10
        log = tmp_path / "events.log"
        while time.monotonic() < deadline and not (log.exists() and log.read_text()):
            time.sleep(0.05)
        assert "Item created" in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        delete_prefix(amqp_url, prefix)
    assert process.returncode == 0, output
    assert "worker: stopped" in output and "logger: stopped" in output
    assert "replay: stopped" in output


def test_the_children_of_run_go_when_it_is_killed(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """An orphaned worker would go on consuming and hold the SQLite lock."""
    env = system_env(amqp_url, prefix, tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "thelca", "run"], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_consumers(amqp_url, f"{prefix}.commands", [process])
        process.kill()
        process.wait(timeout=10)
        deadline = time.monotonic() + 20
        while queue_consumers(amqp_url, f"{prefix}.commands") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert queue_consumers(amqp_url, f"{prefix}.commands") == 0
    finally:
        delete_prefix(amqp_url, prefix)
