"""The pipeline benchmark's own code: its options, its verdicts, and the ceiling's contract work.

No timing here: the figures are made up, so that what is checked is how the
benchmark reads its command line and judges figures, not how fast anything is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import ceiling
from bench.load import Run, pooled
from bench.measure import Figures
from bench.options import FULL, QUICK, parse
from bench.report import Target, aligned, notes, rows, targets
from bench.systems import System


def test_no_options_mean_every_system_at_the_full_sizes() -> None:
    options = parse([])
    assert options.systems == ("floor", "echo", "ceiling", "guarded", "guarded-pg", "sqlite",
                               "pg1", "pg2")
    assert (options.commands, options.latency_commands, options.memory_commands) == (
        FULL["commands"], FULL["latency_commands"], FULL["memory_commands"])
    assert options.window == 200 and options.postgres and not options.long


def test_only_keeps_the_table_s_order_and_always_the_floor() -> None:
    options = parse(["--only", "pg1, sqlite", "--quick"])
    assert options.systems == ("floor", "sqlite", "pg1")
    assert options.commands == QUICK["commands"] and options.memory_commands == 0
    assert not parse(["--only", "ceiling,sqlite"]).postgres


def test_an_option_given_with_quick_wins_over_quick_s_size() -> None:
    options = parse(["--quick", "--commands", "300", "--json", "out.json", "--long"])
    assert options.commands == 300 and options.latency_commands == QUICK["latency_commands"]
    assert options.json == Path("out.json") and options.long


@pytest.mark.parametrize(("argv", "said"), [
    (["--only", "sqlite,mysql"], "unknown system mysql"),
    (["--commands", "0"], "0 is not a positive number"),
    (["--window", "-3"], "-3 is not a positive number"),
])
def test_a_wrong_option_is_refused(argv: list[str], said: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    assert said in capsys.readouterr().err


def run(rate: float, p50_ms: float) -> Run:
    """A run of 100 commands at `rate`, half its latencies below p50_ms."""
    latencies = [p50_ms / 1000 * (0.5 if n < 50 else 1.0) for n in range(100)]
    return Run(100, 100 / rate, latencies, {200: 100})


def figures(creates: float, p50_ms: float, mix: float | None = None) -> Figures:
    return Figures(creates=[run(creates * 0.9, p50_ms), run(creates, p50_ms)],
                   mix=[run(mix or creates, p50_ms)] * 2,
                   latency=[run(500, p50_ms), run(500, p50_ms)], lags=[0.02])


def verdicts(found: list[Target]) -> dict[str, bool | None]:
    return {target.label: target.met for target in found}


def test_targets_take_the_best_round_and_mark_each_met_or_missed() -> None:
    measured = {"floor": figures(1000, 1.0), "ceiling": figures(2000, 0.8),
                "sqlite": figures(1200, 2.1, mix=900), "pg1": figures(850, 2.4)}
    found = verdicts(targets(measured, []))
    assert found["thelca, SQLite: p50 w1 / floor's"] is False  # 2.1x > 2.0x
    assert found["thelca, SQLite: creates w200 / floor's"] is True  # best round 1200
    assert found["thelca, SQLite: mix w200 / floor's"] is False  # 0.9x
    assert found["thelca, SQLite: creates w200 / ceiling's"] is None  # reported only
    assert found["thelca, PostgreSQL, 1 worker: p50 w1 / floor's"] is True  # 2.4x <= 2.5x
    assert found["thelca, PostgreSQL, 1 worker: creates w200 / floor's"] is True  # 0.85x
    assert not any("2 workers" in label for label in found)  # pg2 did not run


def test_a_failed_audit_a_slow_log_and_a_growing_worker_are_missed() -> None:
    sqlite = figures(1200, 1.5)
    sqlite.lags, sqlite.rss = [0.1, 1.5], [40.0, 41.0, 48.0]
    system = System("sqlite", "bench-sqlite-x")
    system.audit = subprocess.CompletedProcess([], 1, "", "chain broken at line 7")
    found = targets({"floor": figures(1000, 1.0), "sqlite": sqlite}, [system],
                    {"sqlite": 0, "postgres": 1})
    assert {label: met for label, met in verdicts(found).items() if met is False} == {
        "thelca, SQLite: log lag after the creates": False,
        "thelca, SQLite: thelca audit of its log (signed)": False,
        "thelca, SQLite: worker RSS over the memory run (3 samples)": False,
        "store_growth.py --store postgres: flat after the first window": False}


def test_the_table_has_a_row_per_system_and_the_ratios() -> None:
    table = rows({"floor": figures(1000, 1.0), "ceiling": figures(2000, 0.8),
                  "sqlite": figures(1500, 2.0)})
    assert table[0][:3] == ["system", "creates/s w200", "mix/s w200"]
    assert table[3] == ["thelca, SQLite", "1,500", "1,500", "2.00 ms", "2.00 ms", "1.50x",
                        "2.00x", "0.75"]
    assert len({len(line) for line in aligned(table).splitlines()}) == 1


def test_a_system_measured_at_window_1_only_has_no_throughput_and_explains_thelca_s_p50(
) -> None:
    guarded = Figures(latency=[run(500, 1.8), run(500, 1.8)])
    measured = {"floor": figures(1000, 1.0), "guarded": guarded, "sqlite": figures(1500, 2.0)}
    table = rows(measured)
    assert table[2] == ["guarded floor, SQLite (window 1)", "", "", "1.80 ms", "1.80 ms", "",
                        "1.80x", ""]
    assert ("thelca, SQLite: p50 w1 2.00 ms = 1.80 ms of its guarantees alone (the guarded "
            "floor, 1.80x the floor's) + 0.20 ms of thelca's own (1.11x the guarded floor)"
            ) in notes(measured)
    assert not any(label.startswith("guarded") for label in verdicts(targets(measured, [])))


def test_pooled_runs_add_their_commands_time_and_statuses() -> None:
    both = pooled([Run(10, 1.0, [0.001] * 10, {200: 9, 404: 1}), Run(30, 1.0, [0.003] * 30,
                                                                        {200: 30})])
    assert (both.commands, both.rate, both.statuses) == (40, 20.0, {200: 39, 404: 1})
    assert both.percentile(0.5) == pytest.approx(3.0)


# ---------------------------------------------------------------- the ceiling's contract work


def properties(token: str | None = "abcd", message_id: str = "m-1") -> SimpleNamespace:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return SimpleNamespace(headers=headers, message_id=message_id)


def test_the_ceiling_creates_reads_and_updates_with_versions_and_events() -> None:
    items = ceiling.Items()
    body = orjson.dumps({"command": "create", "item": {"properties": {"type": "STORY"}}})
    status, reply, kind, event = ceiling.handle(items, properties(), body)
    item = orjson.loads(reply)["item"]
    assert (status, kind, orjson.loads(reply)["version"]) == (200, "Item created", 1)
    assert item["created_by"] == "a-test-only-id-abcd" and item["properties"] == {"type": "STORY"}
    assert event is not None and orjson.loads(event)["value"] == item

    update = {"command": "update", "id": item["id"], "item": {**item, "properties": {"n": 1}}}
    status, reply, kind, _ = ceiling.handle(items, properties(), orjson.dumps(update))
    assert (status, kind, orjson.loads(reply)["version"]) == (200, "Item updated", 2)
    status, reply, kind, event = ceiling.handle(
        items, properties(), orjson.dumps({"command": "read", "id": item["id"]}))
    assert (status, orjson.loads(reply)["item"]["properties"]) == (200, {"n": 1})
    assert event is not None and orjson.loads(event)["value"] == item["id"]


@pytest.mark.parametrize(("token", "command", "status"), [
    (None, {"command": "read", "id": "x"}, 401),
    ("abcd", {"command": "read", "id": "x"}, 404),
    ("abcd", {"command": "delete", "id": "x"}, 400),
    ("abcd", {"command": "create", "item": {"id": "mine"}}, 400),
    ("abcd", {"command": "create", "item": {"properties": [1]}}, 400),
    ("abcd", ["create"], 400),
])
def test_the_ceiling_refuses_as_the_contract_says(token: str | None, command: object,
                                                   status: int) -> None:
    got, reply, _, event = ceiling.handle(ceiling.Items(), properties(token),
                                          orjson.dumps(command))
    assert got == status == orjson.loads(reply)["status"]
    assert (event is not None) == (status == 401)  # only an Access refused event


def test_the_ceiling_refuses_an_update_that_changes_what_is_fixed() -> None:
    items = ceiling.Items()
    _, reply, _, _ = ceiling.handle(items, properties(), b'{"command": "create"}')
    item = orjson.loads(reply)["item"]
    for changed, error in (({"created_by": "me"}, "created_by"), ({"id": "other"}, "id")):
        update = {"command": "update", "id": item["id"], "item": {**item, **changed}}
        status, reply, _, _ = ceiling.handle(items, properties(), orjson.dumps(update))
        assert status == 400 and error in orjson.loads(reply)["error"]
    stale = {"command": "update", "id": item["id"], "item": item, "expected_version": 3}
    assert ceiling.handle(items, properties(), orjson.dumps(stale))[0] == 409


def test_the_ablations_take_away_what_they_name(tmp_path: Path) -> None:
    """benchmarks/ablate.py's hooks find what they wrap (a rename fails here, not in a run):
    no-fsync opens SQLite with synchronous=OFF, where the store's own is FULL (2)."""
    script = (
        "import sys; sys.path.insert(0, 'benchmarks'); import ablate\n"
        "from thelca.stores.sqlite import SQLiteStore\n"
        "from thelca.amqp.publishing import PublishingSession\n"
        "whole = SQLiteStore(sys.argv[1] + '/a.db')\n"
        "before = PublishingSession._publish_batch\n"
        "ablate.no_events(); ablate.no_fsync()\n"
        "ablated = SQLiteStore(sys.argv[1] + '/b.db')\n"
        "print(whole._db.execute('PRAGMA synchronous').fetchone()[0],"
        " ablated._db.execute('PRAGMA synchronous').fetchone()[0],"
        " PublishingSession._publish_batch is not before)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=root,
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["2", "0", "True"]


def test_the_guarded_floor_keeps_item_record_and_event_in_one_transaction(
        tmp_path: Path) -> None:
    """benchmarks/guarded.py's SQLite store: a message_id seen before is answered from its
    record and writes nothing; confirmed events leave the outbox."""
    import sqlite3

    import guarded

    path = tmp_path / "guarded.db"
    transaction, removal = guarded.sqlite_store(str(path))
    assert transaction("m-1", ("i-1", "{}"), "reply 1", ("e-1", "event 1")) is None
    assert transaction("m-1", ("i-2", "{}"), "reply 2", ("e-2", "event 2")) == "reply 1"
    db = sqlite3.connect(path)
    assert db.execute("SELECT id FROM items").fetchall() == [("i-1",)]
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    removal(["e-1"])
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
