"""The AMQP room's operator calls raise thelca's errors, never pika's, against the real broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import system_env
from thelca.amqp import DeadLettersUnavailable, QueueMissing, list_dead, queue_consumers
from thelca.errors import BrokerUnavailable
from thelca_client.contract import Names

pytestmark = pytest.mark.broker

NO_BROKER = "amqp://guest:guest@127.0.0.1:1/%2F"
WRONG_PASSWORD = "not-the-guest-password-4711"


def _wrong_login(amqp_url: str) -> str:
    scheme, _, rest = amqp_url.partition("://")
    host = rest.rpartition("@")[2]
    return f"{scheme}://guest:{WRONG_PASSWORD}@{host}"


def test_no_broker_is_broker_unavailable(prefix: str) -> None:
    with pytest.raises(BrokerUnavailable, match="no broker answered"):
        queue_consumers(NO_BROKER, f"{prefix}.commands", timeout=2)


def test_a_refused_login_is_broker_unavailable_and_keeps_the_password_out(
    amqp_url: str, prefix: str
) -> None:
    with pytest.raises(BrokerUnavailable) as raised:
        queue_consumers(_wrong_login(amqp_url), f"{prefix}.commands", timeout=5)
    assert WRONG_PASSWORD not in str(raised.value)


def test_a_missing_queue_is_queue_missing(amqp_url: str, prefix: str) -> None:
    with pytest.raises(QueueMissing, match=f"no queue {prefix}.commands"):
        queue_consumers(amqp_url, f"{prefix}.commands")


def test_dead_letters_without_a_broker_are_unavailable(prefix: str) -> None:
    with pytest.raises(DeadLettersUnavailable, match="no broker answered"):
        list_dead(NO_BROKER, Names(prefix), 10, timeout=2)


def _health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thelca", "health"], env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def test_health_names_a_missing_queue_without_a_traceback(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    result = _health(system_env(amqp_url, prefix, tmp_path))
    assert result.returncode == 3
    assert "broker: ok" in result.stdout  # it answered: nothing declared the queue
    assert f"worker: FAILED (no worker has declared {prefix}.commands)" in result.stdout
    assert "store: " in result.stdout  # the store is still checked
    assert "Traceback" not in result.stderr


def test_health_reports_a_refused_login_without_the_password(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    result = _health(system_env(_wrong_login(amqp_url), prefix, tmp_path))
    assert result.returncode == 3
    assert "broker: FAILED (BrokerUnavailable: no broker answered" in result.stdout
    assert WRONG_PASSWORD not in result.stdout + result.stderr
    # (pika itself logs the refused login with its traceback; that is logged, not raised)
