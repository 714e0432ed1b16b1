"""The logger role on real files: what it writes, what it refuses, and its checkpoints.

The broker's side (exchange and user_id of real deliveries) is in
tests/integration/test_audit_trail.py; here the role is handed messages.
"""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from thelca import metrics
from thelca.audit.checkpoints import Checkpoint, CheckpointWriter, checkpoints_path
from thelca.audit.verify import audit
from thelca.eventlog.writer import EventLogWriter
from thelca.roles.logwriter import LogWriterRole
from thelca.roles.messages import Incoming
from thelca_client.contract import DEAD_REASON_HEADER, Names

NAMES = Names("unit")


class Clock:
    """A clock the test moves by hand, for the checkpoints' interval."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _event(n: int) -> bytes:
    return orjson.dumps({"time": "2026-01-01T00:00:00.000000+00:00", "type": "Item read",
                         "user": "u", "value": f"item-{n}", "id": f"event-{n}",
                         "command_id": f"c{n}"})


def _from_worker(n: int, user_id: str | None = "thelca-worker") -> Incoming:
    return Incoming(_event(n), message_id=f"event-{n}", exchange=NAMES.events, user_id=user_id)


def _logger(tmp_path: Path, clock: Clock | None = None, key: Ed25519PrivateKey | None = None,
            publishers: frozenset[str] | None = None) -> LogWriterRole:
    writer = EventLogWriter(tmp_path / "events.log")
    checkpoints = CheckpointWriter(checkpoints_path(writer.path), key, clock=clock or Clock())
    return LogWriterRole(writer, NAMES, publishers=publishers, checkpoints=checkpoints)


def _ids(tmp_path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (tmp_path / "events.log").read_text().splitlines()]


def _rejected(reason: str) -> float:
    value = metrics.LOG_REJECTED.labels(reason)._value.get()
    return float(value)


def test_an_event_put_straight_on_the_queue_is_dead_lettered_not_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    logger = _logger(tmp_path)
    before = _rejected("exchange")
    forged = Incoming(_event(2), message_id="forged\nWARNING fake line\u2028x", exchange="",
                      headers={"Authorization": "Bearer secret-token", "x-note": "kept"})
    with caplog.at_level(logging.WARNING):
        out = logger.handle([_from_worker(1), forged, _from_worker(3)])
    logger.close()
    assert _ids(tmp_path) == ["event-1", "event-3"]
    assert len(out) == 1 and out[0].exchange == NAMES.dead and out[0].body == forged.body
    assert out[0].headers is not None and "Authorization" not in out[0].headers
    assert out[0].headers["x-note"] == "kept"
    assert out[0].headers[DEAD_REASON_HEADER] == (
        f"logger: not published through {NAMES.events} (it came straight to the queue, through "
        "the default exchange): only the worker's events are written")
    assert _rejected("exchange") == before + 1
    text = caplog.text
    assert "'forged\\nWARNING fake line\\u2028x'" in text  # escaped: no line of its own
    assert "\nWARNING fake line" not in text and "secret-token" not in text


def test_an_event_through_another_exchange_is_refused_too(tmp_path: Path) -> None:
    logger = _logger(tmp_path)
    out = logger.handle([Incoming(_event(1), exchange="someone.elses")])
    logger.close()
    assert not (tmp_path / "events.log").read_bytes()
    assert "through the exchange 'someone.elses'" in str(out[0].headers)


def test_with_event_publishers_only_their_events_are_written(tmp_path: Path) -> None:
    logger = _logger(tmp_path, publishers=frozenset({"thelca-worker"}))
    before = _rejected("publisher")
    out = logger.handle([_from_worker(1), _from_worker(2, user_id="rogue"),
                         _from_worker(3, user_id=None), _from_worker(4)])
    logger.close()
    assert _ids(tmp_path) == ["event-1", "event-4"]
    reasons = [m.headers[DEAD_REASON_HEADER] for m in out if m.headers]
    assert reasons == [
        "logger: published with user_id 'rogue', which is not one of the event publishers "
        "(THELCA_EVENT_PUBLISHERS)",
        "logger: published with no user_id, which is not one of the event publishers "
        "(THELCA_EVENT_PUBLISHERS)"]
    assert _rejected("publisher") == before + 2


def test_a_body_that_is_not_a_json_object_is_still_dead_lettered(tmp_path: Path) -> None:
    logger = _logger(tmp_path)
    before = _rejected("format")
    out = logger.handle([Incoming(b"[1]", exchange=NAMES.events)])
    logger.close()
    assert out[0].headers is not None
    assert out[0].headers[DEAD_REASON_HEADER] == "logger: the event is not a JSON object"
    assert _rejected("format") == before + 1


def test_a_checkpoint_is_due_every_interval_while_lines_are_written_and_at_stop(
    tmp_path: Path,
) -> None:
    clock, key = Clock(), Ed25519PrivateKey.generate()
    logger = _logger(tmp_path, clock, key)
    assert logger.handle([_from_worker(1)]) == []  # the interval has not passed
    clock.now += 9
    published = logger.handle([_from_worker(2)])  # due: written and published
    assert [m.exchange for m in published] == [NAMES.checkpoints]
    first = Checkpoint.parse(published[0].body)
    assert (first.lines, first.last) == (2, logger.writer.chain.last)
    assert first.problem_with_signature({first.key or "": key.public_key()}) is None
    clock.now += 30
    assert logger.tick(False) == []  # idle: no line since the last checkpoint, none is due
    assert logger.handle([_from_worker(3)]) != []  # the interval is long past: one at once
    logger.handle([_from_worker(4)])
    assert logger.tick(False) == []  # 9 seconds have not passed since
    clock.now += 9
    idle = logger.tick(False)  # traffic stopped: the timer writes it
    assert Checkpoint.parse(idle[0].body).lines == 4
    logger.handle([_from_worker(5)])
    last = logger.tick(True)  # stopping: whenever a line came since the last
    assert Checkpoint.parse(last[0].body).lines == 5
    assert logger.tick(True) == []
    logger.close()  # nothing new: no checkpoint more
    lines = checkpoints_path(tmp_path / "events.log").read_bytes().splitlines()
    assert [Checkpoint.parse(line).lines for line in lines] == [2, 3, 4, 5]
    assert lines[-1] == last[0].body  # what witnesses get is the line in the file
    report = audit(tmp_path / "events.log", public_keys=[key.public_key()])
    assert report.exit_code == 0 and report.matched == 4


def test_a_restart_that_writes_nothing_adds_no_checkpoint(tmp_path: Path) -> None:
    logger = _logger(tmp_path)
    logger.handle([_from_worker(1)])
    logger.close()  # the stop's checkpoint
    clock = Clock()
    restarted = _logger(tmp_path, clock)
    clock.now += 60
    assert restarted.tick(False) == [] and restarted.tick(True) == []
    restarted.close()
    assert len(checkpoints_path(tmp_path / "events.log").read_bytes().splitlines()) == 1


def test_an_empty_log_gets_no_checkpoint(tmp_path: Path) -> None:
    clock = Clock()
    logger = _logger(tmp_path, clock)
    clock.now += 60
    assert logger.tick(False) == [] and logger.tick(True) == []
    logger.close()
    assert not checkpoints_path(tmp_path / "events.log").read_bytes()


def test_the_stop_checkpoint_is_written_even_when_the_broker_is_gone(tmp_path: Path) -> None:
    logger = _logger(tmp_path)
    logger.handle([_from_worker(1), _from_worker(2)])
    logger.close()  # no last tick came (no connection): close writes it
    checkpoint = Checkpoint.parse(
        checkpoints_path(tmp_path / "events.log").read_bytes().splitlines()[-1])
    assert (checkpoint.lines, checkpoint.sig) == (2, None)


class _FullDisk:
    """The checkpoints file, on a disk that is full for one write."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def test_a_checkpoint_that_cannot_be_written_fails_no_batch_and_comes_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    logger = _logger(tmp_path, clock)
    assert logger.checkpoints is not None
    logger.checkpoints._file = _FullDisk(logger.checkpoints._file)  # type: ignore[assignment]
    clock.now += 9
    with caplog.at_level(logging.ERROR):
        assert logger.handle([_from_worker(1)]) == []  # written; the checkpoint was not
    assert "cannot write a checkpoint" in caplog.text and "No space" in caplog.text
    assert _ids(tmp_path) == ["event-1"]
    assert not checkpoints_path(tmp_path / "events.log").read_bytes()  # cut back
    assert Checkpoint.parse(logger.tick(False)[0].body).lines == 1  # the next tick
    logger.close()
