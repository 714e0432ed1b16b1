"""What the CLI says when something is wrong: one line a person can act on, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import RunningSystem, system_env

pytestmark = pytest.mark.broker


def thelca(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thelca", *args], env=env, text=True,
                          capture_output=True, timeout=120, check=False)


def test_publish_with_no_broker_at_the_url_says_so_in_one_line(
    amqp_url: str, tmp_path: Path
) -> None:
    env = system_env(amqp_url, "nobody", tmp_path, THELCA_TOKEN="abcd",
                     THELCA_LOG_LEVEL="INFO",
                     THELCA_AMQP_URL="amqp://guest:guest@127.0.0.1:5999/%2F")
    result = thelca("publish", "read", "--id", "x", "--timeout", "1", env=env)

    assert result.returncode == 3
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("thelca publish: no broker answered at 127.0.0.1:5999 "
                                    "within 1 s (connection refused")
    assert "may or may not" not in result.stderr  # it never connected: nothing was sent


def test_publish_with_a_refused_password_says_so_at_once(amqp_url: str, tmp_path: Path) -> None:
    wrong = amqp_url.replace("guest:guest@", "guest:wrong-password@", 1)
    env = system_env(amqp_url, "nobody", tmp_path, THELCA_TOKEN="abcd", THELCA_AMQP_URL=wrong,
                     THELCA_LOG_LEVEL="INFO")
    started = time.monotonic()
    result = thelca("publish", "read", "--id", "x", "--timeout", "60", env=env)

    assert time.monotonic() - started < 30, "retried although the login was refused"
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1, result.stderr
    assert "refused the login of user 'guest' (ACCESS_REFUSED)" in result.stderr
    assert "wrong-password" not in result.stderr


def test_health_with_no_worker_ever_says_so_rather_than_blaming_the_broker(
    amqp_url: str, tmp_path: Path
) -> None:
    prefix = f"nobody-{uuid.uuid4().hex[:8]}"
    result = thelca("health", env=system_env(amqp_url, prefix, tmp_path))

    assert result.returncode == 3
    assert "broker: ok" in result.stdout
    assert f"worker: FAILED (no worker has declared {prefix}.commands)" in result.stdout
    assert "broker: FAILED" not in result.stdout


def test_the_loggers_health_does_not_turn_red_when_the_worker_is_down(
    system: RunningSystem,
) -> None:
    assert thelca("health", "--role", "logger", env=system.env).returncode == 0
    assert system.stop("worker") == 0

    logger = thelca("health", "--role", "logger", env=system.env)
    worker = thelca("health", env=system.env)
    replay = thelca("health", "--role", "replay", env=system.env)

    assert logger.returncode == 0, logger.stdout
    assert f"logger: ok (1 consuming {system.names.events_log})" in logger.stdout
    assert worker.returncode == 3
    assert replay.returncode == 3  # this system runs no replay consumer
    assert f"replay: FAILED (nothing consumes {system.names.replay})" in replay.stdout
