"""`thelca restore` and `thelca verify` as a user runs them, on logs the live system wrote.

The worker and the logger are the real processes (the `system` fixture); the
restored stores are real SQLite files; the commands are the real CLI.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    RunningSystem,
    _running_system,
    system_env,
)
from thelca.eventlog.reader import read_all
from thelca.eventlog.segments import log_segments
from thelca.stores.sqlite import SQLiteStore
from thelca_client import Client

pytestmark = pytest.mark.broker

ORIGINAL = Path(__file__).resolve().parents[1] / "data" / "original-server-event-log"


def thelca(*args: str, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thelca", *args], env=env, cwd=cwd, text=True,
                          capture_output=True, timeout=120, check=False)


def state(path: Path) -> dict[str, tuple[int, dict[str, Any]]]:
    """Every item of a SQLite store (opened read-only, as beside a running worker)."""
    store = SQLiteStore(path, writer=False)
    try:
        return {s.item.id: (s.version, s.item.to_json()) for s in store.items()}
    finally:
        store.close()


def link_state(path: Path) -> dict[str, tuple[int, dict[str, Any]]]:
    """Every link of a SQLite store, opened read-only."""
    store = SQLiteStore(path, writer=False)
    try:
        return {s.link.id: (s.version, s.link.to_json()) for s in store.links()}
    finally:
        store.close()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def work(client: Client, n: int, tag: str) -> list[dict[str, Any]]:
    """n creates, a read of each, and two updates of every other item."""
    items = []
    for i in range(n):
        reply = client.create({"tag": tag, "n": i})
        assert reply.item is not None
        items.append(reply.item)
    for item in items:
        client.read(item["id"])
    for item in items[::2]:
        for step in (1, 2):
            reply = client.update(item["id"], {**item, "properties": {"tag": tag, "step": step}})
            assert reply.ok
    return items


def wait_until_logged(system: RunningSystem, events: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(1 for line in read_all(system.event_log) if line.event) >= events:
            return
        time.sleep(0.1)
    raise AssertionError(f"the logger did not write {events} events in time")


def test_restore_to_the_end_and_to_moments_gives_the_live_states(
    system: RunningSystem, tmp_path: Path
) -> None:
    with Client(system.amqp_url, prefix=system.prefix, token="abcd") as client:
        work(client, 6, "first")  # 6 creates + 6 reads + 6 updates = 18 events
        wait_until_logged(system, 18)
        first_moment, first_state = now(), state(system.store_path)
        time.sleep(0.01)
        more = work(client, 4, "second")  # 12 more
        client.update(more[1]["id"], {**more[1], "properties": {"late": True}})
        wait_until_logged(system, 31)
        second_moment, second_state = now(), state(system.store_path)
        client.create({"tag": "third"})
        wait_until_logged(system, 32)
    live = state(system.store_path)
    assert len(first_state) == 6 and len(second_state) == 10 and len(live) == 11

    env = system_env(system.amqp_url, system.prefix, tmp_path)
    for name, until, expected in (("end", None, live), ("first", first_moment, first_state),
                                  ("second", second_moment, second_state)):
        target = tmp_path / f"{name}.db"
        args = ["restore", "--log", str(system.event_log), "--store", f"sqlite:///{target}"]
        result = thelca(*args, *(["--until", until] if until else []), env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert state(target) == expected, name  # the same items at the same versions
        assert f"items restored:   {len(expected)}" in result.stdout
        assert "Item read" in result.stdout and "problem lines:    0" in result.stdout
        verified = thelca("verify", "--log", str(system.event_log), "--store",
                          f"sqlite:///{target}", *(["--until", until] if until else []),
                          env=env)
        assert verified.returncode == 0, verified.stdout
        assert "0 differences" in verified.stdout


def test_restore_refuses_a_store_that_holds_items_unless_forced(
    system: RunningSystem, tmp_path: Path
) -> None:
    with Client(system.amqp_url, prefix=system.prefix, token="abcd") as client:
        item = client.create({"n": 1}).item
        assert item is not None
        client.update(item["id"], {**item, "properties": {"n": 2}})
    wait_until_logged(system, 2)
    target = tmp_path / "restored.db"
    args = ["restore", "--log", str(system.event_log), "--store", f"sqlite:///{target}"]
    assert thelca(*args).returncode == 0
    again = thelca(*args)
    assert again.returncode == 2
    assert "already holds 1 items" in again.stderr and "--force" in again.stderr
    forced = thelca(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "emptied the store (1 items, 0 links)" in forced.stdout
    assert state(target) == state(system.store_path)
    # the live store is locked by the running worker: unavailable, and nothing happens
    locked = thelca("restore", "--log", str(system.event_log), "--store",
                    f"sqlite:///{system.store_path}", "--force")
    assert locked.returncode == 3
    assert "already open for writing" in locked.stderr
    missing = thelca("restore", "--log", str(tmp_path / "nothing.log"), "--store",
                     f"sqlite:///{tmp_path / 'other.db'}")
    assert missing.returncode == 3 and "no event log" in missing.stderr
    assert not (tmp_path / "other.db").exists()


def test_a_torn_last_line_is_reported_with_its_number_and_the_rest_restored(
    system: RunningSystem, tmp_path: Path
) -> None:
    with Client(system.amqp_url, prefix=system.prefix, token="abcd") as client:
        for n in range(3):
            client.create({"n": n})
    wait_until_logged(system, 3)
    log = tmp_path / "copied.log"
    shutil.copy(system.event_log, log)
    with open(log, "ab") as file:
        file.write(b'{"time":"2026-01-01T00:00:00+00:00","type":"Item cre')
    target = tmp_path / "restored.db"
    result = thelca("restore", "--log", str(log), "--store", f"sqlite:///{target}")
    assert result.returncode == 1, result.stdout
    assert "problem line: copied.log:4: torn line" in result.stdout
    assert "items restored:   3" in result.stdout
    assert state(target) == state(system.store_path)


def test_verify_finds_a_difference_planted_in_the_store(
    system: RunningSystem, tmp_path: Path
) -> None:
    with Client(system.amqp_url, prefix=system.prefix, token="abcd") as client:
        items = [client.create({"n": n}).item for n in range(3)]
    wait_until_logged(system, 3)
    live = thelca("verify", "--log", str(system.event_log), "--store",
                  f"sqlite:///{system.store_path}")  # read-only, beside the running worker
    assert live.returncode == 0, live.stdout + live.stderr
    target = tmp_path / "restored.db"
    assert thelca("restore", "--log", str(system.event_log), "--store",
                  f"sqlite:///{target}").returncode == 0
    planted = items[1]
    assert planted is not None
    with sqlite3.connect(target) as db:
        db.execute("UPDATE items SET properties = ?, version = 7 WHERE id = ?",
                   (b'{"n": "planted"}', planted["id"]))
    result = thelca("verify", "--log", str(system.event_log), "--store", f"sqlite:///{target}")
    assert result.returncode == 1
    assert (f"difference: different {planted['id']}: version 1 in the log, 7 in the store; "
            "other properties") in result.stdout
    assert "1 differences" in result.stdout


def test_the_logger_rotates_into_segments_and_restore_reads_them_all(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    env = system_env(amqp_url, prefix, tmp_path, THELCA_EVENT_LOG_MAX_BYTES="2000")
    for running in _running_system(amqp_url, prefix, tmp_path, env=env):
        # The logger rotates before a batch once the live file has reached the limit, and a
        # segment holds whole batches (which gather events for up to 20 ms): four rounds of
        # six events (about 400 bytes each), each logged before the next, rotate three times.
        with Client(amqp_url, prefix=prefix, token="abcd") as client:
            for rounds in range(1, 5):
                work(client, 2, "rotated")
                wait_until_logged(running, 6 * rounds)
        segments = log_segments(running.event_log)
        assert len(segments) >= 3, segments
        assert [s.name for s in segments][:2] == ["events.log.000001", "events.log.000002"]
        ids = [line.event["id"] for line in read_all(running.event_log) if line.event]
        assert len(ids) == len(set(ids)) == 24
        target = tmp_path / "restored.db"
        result = thelca("restore", "--log", str(running.event_log), "--store",
                        f"sqlite:///{target}")
        assert result.returncode == 0, result.stdout + result.stderr
        assert state(target) == state(running.store_path)


def test_the_original_servers_log_restores_to_yesterday_and_verifies(tmp_path: Path) -> None:
    """The README's walk-through, on the original server's log: 2020-02-25 is 'today'."""
    log = tmp_path / "thelca-events.log"
    shutil.copy(ORIGINAL, log)
    store = f"sqlite:///{tmp_path / 'yesterday.db'}"
    yesterday = "2020-02-24T23:59:59.999999+00:00"
    restored = thelca("restore", "--log", str(log), "--until", yesterday, "--store", store)
    assert restored.returncode == 0, restored.stderr
    for kind in ("Server started", "Link read", "Service read", "Item search"):
        assert kind in restored.stdout
    assert "items restored:   3" in restored.stdout
    assert "links restored:   1" in restored.stdout  # created that day, deleted the next
    verified = thelca("verify", "--log", str(log), "--until", yesterday, "--store", store)
    assert verified.returncode == 0, verified.stdout
    whole = thelca("verify", "--log", str(log), "--store", store)
    assert whole.returncode == 1 and "missing" in whole.stdout


def test_a_live_log_with_links_restores_them_to_the_end_and_to_a_moment(
    system: RunningSystem, tmp_path: Path
) -> None:
    with Client(system.amqp_url, prefix=system.prefix, token="abcd") as client:
        a, b, c = (client.create({"n": n}).item["id"] for n in range(3))
        kept = client.create_link(a, b, {"type": "BLOCKS"}).link
        doomed = client.create_link(b, c).link
        client.update_link(kept["id"], {**kept, "target": c}, expected_version=1)
        client.read_link(kept["id"])
        client.search_links(either=b)
        client.search_items({"n": 1})
        wait_until_logged(system, 9)
        moment, then = now(), link_state(system.store_path)
        time.sleep(0.01)
        client.delete_link(doomed["id"])
        later = client.create_link(c, a).link
        client.update_link(later["id"], {**later, "properties": {"n": 2}})
        wait_until_logged(system, 12)
    live = link_state(system.store_path)
    assert set(then) == {kept["id"], doomed["id"]} and set(live) == {kept["id"], later["id"]}
    env = system_env(system.amqp_url, system.prefix, tmp_path)
    for name, until, expected in (("end", None, live), ("moment", moment, then)):
        target = tmp_path / f"{name}.db"
        args = ["--log", str(system.event_log), "--store", f"sqlite:///{target}",
                *(["--until", until] if until else [])]
        result = thelca("restore", *args, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert link_state(target) == expected, name
        assert f"links restored:   {len(expected)}" in result.stdout
        for kind in ("Link read", "Link search", "Item search"):
            assert kind in result.stdout  # audited, and skipped by restore
        verified = thelca("verify", *args, env=env)
        assert verified.returncode == 0, verified.stdout
        assert f"{len(expected)} links in the log, {len(expected)} in the store" in (
            verified.stdout)


def test_verify_reports_a_missing_an_extra_and_a_different_link(
    system: RunningSystem, tmp_path: Path
) -> None:
    with Client(system.amqp_url, prefix=system.prefix, token="abcd") as client:
        a, b = (client.create().item["id"] for _ in range(2))
        links = [client.create_link(a, b, {"n": n}).link for n in range(3)]
    wait_until_logged(system, 5)
    target = tmp_path / "restored.db"
    assert thelca("restore", "--log", str(system.event_log), "--store",
                  f"sqlite:///{target}").returncode == 0
    with sqlite3.connect(target) as db:  # as a bad hand would
        db.execute("DELETE FROM links WHERE id = ?", (links[0]["id"],))
        db.execute("UPDATE links SET target = ?, version = 2 WHERE id = ?", (a, links[1]["id"]))
        db.execute("INSERT INTO links SELECT 'planted', created_at, created_by, source, target, "
                   "properties, version FROM links WHERE id = ?", (links[2]["id"],))
    result = thelca("verify", "--log", str(system.event_log), "--store", f"sqlite:///{target}")
    assert result.returncode == 1, result.stdout
    for difference in (
        f"missing link {links[0]['id']}: version 1 in the log, not in the store",
        f"different link {links[1]['id']}: version 1 in the log, 2 in the store; other target",
        "extra link planted: version 1 in the store, not in the log",
    ):
        assert f"difference: {difference}" in result.stdout
    assert "3 links in the log, 3 in the store" in result.stdout
    assert "3 differences" in result.stdout


@pytest.mark.parametrize("command", [["restore"], ["verify"], ["replay"]])
def test_help_answers_and_documents_the_exit_status(command: list[str]) -> None:
    result = thelca(*command, "--help")
    assert result.returncode == 0
    assert "usage: thelca" in result.stdout
    if command != ["replay"]:
        assert "Exit status" in result.stdout
