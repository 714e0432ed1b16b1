"""The command line for scaling out: `--processes N`, and PostgreSQL store URLs.

`--processes` is a setting like any other, refused where the store has one
writer; a PostgreSQL URL's password never shows in what thelca prints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from thelca.bootstrap import check_processes, child_environment, worker_children
from thelca.errors import ConfigurationError
from thelca.settings import Settings


def thelca(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thelca", *args], env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THELCA_")}
    return {**env, "THELCA_AUTHORITY": "test-only", **settings}


def test_processes_comes_from_the_flag_or_the_environment() -> None:
    assert Settings.resolve(environ={}).processes == 1
    assert Settings.resolve(environ={"THELCA_PROCESSES": "3"}).processes == 3
    with pytest.raises(ConfigurationError, match="THELCA_PROCESSES must be at least 1"):
        Settings.resolve(environ={"THELCA_PROCESSES": "0"})
    with pytest.raises(ConfigurationError, match="whole number"):
        Settings.resolve(environ={"THELCA_PROCESSES": "many"})


@pytest.mark.parametrize(("store", "why"), [("sqlite:///x.db", "SQLite is one writer"),
                                             ("memory:", "inside one process")])
def test_many_processes_are_refused_on_a_store_with_one_writer(store: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why) as refused:
        check_processes(Settings(store=store, processes=2))
    assert "postgresql://" in str(refused.value) and "--processes 1" in str(refused.value)
    check_processes(Settings(store=store, processes=1))
    check_processes(Settings(store="postgresql://u@h/db", processes=8))


def test_each_child_runs_one_worker_process() -> None:
    settings = Settings(store="postgresql://u@h/db", processes=3)
    assert worker_children(settings) == {f"worker-{n}": ["worker"] for n in (1, 2, 3)}
    assert worker_children(Settings()) == {"worker": ["worker"]}
    env = child_environment(settings, {"PATH": "/bin", "THELCA_PROCESSES": "3"})
    assert env["THELCA_PROCESSES"] == "1" and env["PATH"] == "/bin"
    assert env["THELCA_STORE"] == "postgresql://u@h/db"


@pytest.mark.parametrize("command", ["worker", "run"])
def test_the_cli_refuses_many_processes_on_sqlite_before_starting_any(
    command: str, tmp_path: Path
) -> None:
    env = clean_env(THELCA_STORE=f"sqlite:///{tmp_path / 'x.db'}")
    result = thelca(command, "--processes", "2", env=env)
    assert result.returncode == 3
    assert "SQLite is one writer" in result.stderr
    assert "started" not in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_help_shows_the_processes_setting() -> None:
    result = thelca("worker", "--help", env=clean_env())
    assert result.returncode == 0
    assert "--processes" in result.stdout and "THELCA_PROCESSES" in result.stdout


def test_health_answers_for_a_postgresql_store(pg_store_url: str) -> None:
    result = thelca("health", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2F",
                    env=clean_env(THELCA_STORE=pg_store_url))
    assert "store: ok" in result.stdout
    assert "dedup window: 604800 s" in result.stdout
    assert result.returncode == 3  # no broker on port 1


def test_a_postgresql_password_never_shows(tmp_path: Path) -> None:
    url = "postgresql://thelca:hunter2@127.0.0.1:1/test?schema=x"
    env = clean_env(THELCA_STORE=url, THELCA_AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2F")
    health = thelca("health", env=env)
    assert "store: FAILED" in health.stdout and "thelca:***@127.0.0.1:1" in health.stdout
    worker = thelca("worker", env=env)
    assert worker.returncode == 3 and "cannot connect to PostgreSQL" in worker.stderr
    for result in (health, worker, thelca("worker", "--help", env=env)):
        assert "hunter2" not in result.stdout + result.stderr
