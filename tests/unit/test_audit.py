"""The hash chain, the signed checkpoints and `thelca audit`, on real log files tampered with."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from thelca.audit import chain as chain_module
from thelca.audit.chain import (
    GENESIS,
    Chain,
    count_lines,
    line_hash,
    lines_backwards,
    prev_of,
    with_prev,
)
from thelca.audit.checkpoints import (
    Checkpoint,
    CheckpointWriter,
    checkpoints_path,
    key_id,
    last_checkpoint,
    load_public_key,
    load_signing_key,
)
from thelca.audit.verify import AuditReport, audit
from thelca.cli.main import main
from thelca.errors import ConfigurationError
from thelca.eventlog import EventLogWriter, heal_torn_tail, read_all
from thelca.eventlog.reader import log_lines_backwards

ORIGINAL = Path(__file__).resolve().parents[1] / "data" / "original-server-event-log"


def _event(n: int) -> dict[str, Any]:
    return {"time": f"2026-01-01T00:00:{n % 60:02d}.000000+00:00", "type": "Item created",
            "user": "a-test-only-id-abcd",
            "value": {"id": f"item-{n}", "created_at": "2026-01-01T00:00:00.000000+00:00",
                      "created_by": "a-test-only-id-abcd", "properties": {"title": f"story {n}"}},
            "id": f"event-{n}"}


def _append(log: Path, chain: Chain, events: range) -> None:
    """Link and append the events to the live file, as the logger will."""
    with open(log, "ab") as file:
        for n in events:
            file.write(chain.link(orjson.dumps(_event(n)) + b"\n"))


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def public_pem(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "log-signing.pub.pem"
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def _signed_log(log: Path, key: Ed25519PrivateKey | None, lines: int = 20,
                every: int = 10) -> Chain:
    """A chained log of `lines` lines with a checkpoint every `every` lines."""
    chain = Chain.resume(log)
    writer = CheckpointWriter(checkpoints_path(log), key)
    for start in range(0, lines, every):
        _append(log, chain, range(start, min(start + every, lines)))
        writer.write(chain.lines, chain.last)
    writer.close()
    return chain


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _audit(log: Path, key: Ed25519PrivateKey | None = None, **kw: Any) -> AuditReport:
    return audit(log, public_keys=[key.public_key()] if key else [], **kw)


def _breaks(report: AuditReport) -> list[str]:
    return [f"{b.file}:{b.number}" for b in report.walk.breaks]


# ---------------------------------------------------------------- the chain


def test_prev_is_added_as_the_last_key_without_touching_the_other_bytes() -> None:
    line = orjson.dumps(_event(1))
    linked = with_prev(GENESIS, line)
    assert linked == line[:-1] + b',"prev":"' + b"0" * 64 + b'"}'
    assert list(orjson.loads(linked))[-1] == "prev"
    assert orjson.loads(linked) == {**_event(1), "prev": GENESIS}


def test_the_hash_is_the_sha256_of_the_exact_line_without_its_newline() -> None:
    chain = Chain()
    first = chain.link(b'{"a":1}\n')
    assert first == b'{"a":1,"prev":"' + GENESIS.encode() + b'"}\n'
    assert chain.last == hashlib.sha256(first[:-1]).hexdigest() == line_hash(first[:-1])
    second = chain.link(b'{"b":2}')  # no newline in, none out
    assert second == b'{"b":2,"prev":"' + line_hash(first[:-1]).encode() + b'"}'
    assert chain.lines == 2


@pytest.mark.parametrize(("line", "value"), [
    (b"{}", {}),
    (b'{"title":"prev"}', {"title": "prev"}),  # "prev" in a value: re-encoded, value kept
    (b'{"prev":"forged","a":1}', {"a": 1}),  # a top-level prev of its own is replaced
    (b'{"a": 1 }', {"a": 1}),
])
def test_lines_that_cannot_just_be_appended_to_are_reencoded_with_prev_last(
    line: bytes, value: dict[str, Any],
) -> None:
    linked = with_prev("ab" * 32, line)
    assert orjson.loads(linked) == {**value, "prev": "ab" * 32}
    assert list(orjson.loads(linked))[-1] == "prev"
    assert prev_of(linked) == "ab" * 32


@pytest.mark.parametrize("line", [b"[1]", b'"x"', b'{"a":\n1}', b"", b'{"prev":not json}'])
def test_a_line_that_is_not_one_json_object_cannot_be_linked(line: bytes) -> None:
    with pytest.raises(ValueError, match="JSON"):
        with_prev(GENESIS, line)


def test_prev_of_reads_the_prev_wherever_it_is_and_none_without_one() -> None:
    assert prev_of(b'{"a":1,"prev":"' + b"c" * 64 + b'"}') == "c" * 64
    assert prev_of(b'{"prev":"' + b"d" * 64 + b'","a":1}') == "d" * 64
    assert prev_of(b'{"value":{"prev":"x"}}') is None  # only a top-level prev counts
    assert prev_of(b'{"prev":7}') == ""
    assert prev_of(b"not json") is None


def test_a_chain_rewinds_to_a_mark_when_its_batch_was_not_written() -> None:
    chain = Chain()
    chain.link(b'{"a":1}')
    mark = chain.mark()
    chain.link(b'{"a":2}')
    chain.rewind(mark)
    assert (chain.last, chain.lines) == mark
    again = Chain()
    again.link(b'{"a":1}')
    assert chain.link(b'{"a":3}') == again.link(b'{"a":3}')


def test_a_new_log_starts_at_genesis(tmp_path: Path) -> None:
    chain = Chain.resume(tmp_path / "events.log")
    assert (chain.last, chain.lines) == (GENESIS, 0)
    (tmp_path / "events.log").touch()
    assert Chain.resume(tmp_path / "events.log").last == GENESIS


def test_resume_continues_from_the_last_complete_line_of_the_newest_file(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    chain = Chain()
    _append(log, chain, range(3))
    log.rename(tmp_path / "events.log.000001")
    _append(log, chain, range(3, 5))
    log.rename(tmp_path / "events.log.000002")
    log.touch()  # a fresh live file, empty: the newest segment holds the last line
    resumed = Chain.resume(log)
    assert (resumed.last, resumed.lines) == (chain.last, 5)
    with open(log, "ab") as file:
        file.write(b'{"torn":')  # not a complete line: not part of the chain
    assert (Chain.resume(log).last, Chain.resume(log).lines) == (chain.last, 5)


def test_lines_backwards_reads_across_blocks_and_skips_a_torn_piece(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    lines = [b'{"n":%d,"pad":"%s"}' % (n, b"x" * n) for n in range(12)]
    log.write_bytes(b"\n".join(lines) + b"\n" + b'{"torn":"xxxxxxxxxxxxxxx')
    assert list(log_lines_backwards(log, block=7)) == lines[::-1]  # lines longer than a block
    assert list(lines_backwards(log)) == lines[::-1]  # the chain reads the log's own way
    assert count_lines(log) == 12


def test_resume_counts_lines_from_the_last_checkpoint_without_reading_the_whole_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: Ed25519PrivateKey,
) -> None:
    log = tmp_path / "events.log"
    chain = _signed_log(log, key, lines=25, every=10)  # checkpoints at 10, 20 and 25
    _append(log, chain, range(25, 28))  # three lines after the last checkpoint

    def count_everything(path: object) -> int:
        raise AssertionError("counted the whole log")

    monkeypatch.setattr(chain_module, "count_lines", count_everything)
    resumed = Chain.resume(log)
    assert (resumed.last, resumed.lines) == (chain.last, 28)


def test_resume_counts_every_line_when_the_checkpoint_matches_no_line(
    tmp_path: Path, key: Ed25519PrivateKey,
) -> None:
    log = tmp_path / "events.log"
    chain = _signed_log(log, key, lines=12, every=5)
    writer = CheckpointWriter(checkpoints_path(log), key)
    writer.write(99, "e" * 64)  # matches nothing
    writer.close()
    assert Chain.resume(log).lines == chain.lines == 12


# ---------------------------------------------------------------- checkpoints


def test_a_checkpoint_is_signed_over_its_canonical_json_with_the_key_id_of_the_raw_key(
    tmp_path: Path, key: Ed25519PrivateKey,
) -> None:
    writer = CheckpointWriter(tmp_path / "events.log.checkpoints", key)
    line = writer.write(7, "a" * 64)
    writer.close()
    assert (tmp_path / "events.log.checkpoints").read_bytes() == line + b"\n"
    record = json.loads(line)
    assert list(record) == ["time", "lines", "last", "key", "sig"]
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    assert record["key"] == hashlib.sha256(raw).hexdigest()[:16] == key_id(key.public_key())
    unsigned = {k: v for k, v in record.items() if k != "sig"}
    key.public_key().verify(base64.b64decode(record["sig"]),
                            json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode())
    assert Checkpoint.parse(line).problem_with_signature({record["key"]: key.public_key()}) is None


def test_without_a_key_checkpoints_are_unsigned(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path / "c", None)
    record = json.loads(writer.write(3, "b" * 64))
    assert (record["key"], record["sig"], record["lines"]) == (None, None, 3)
    assert Checkpoint.parse(writer.write(4, "b" * 64)).problem_with_signature({}) == "unsigned"


def test_a_checkpoint_is_due_when_lines_were_written_and_the_interval_is_up(
    tmp_path: Path,
) -> None:
    now = [100.0]
    writer = CheckpointWriter(tmp_path / "c", None, interval=10, clock=lambda: now[0])
    assert not writer.due(5)
    now[0] = 110.0
    assert writer.due(5)
    writer.write(5, "c" * 64)
    now[0] = 125.0
    assert not writer.due(5)  # nothing written since
    assert writer.due(6)


def test_a_torn_checkpoint_is_set_aside_before_the_next_one_is_written(tmp_path: Path) -> None:
    path = tmp_path / "events.log.checkpoints"
    path.write_bytes(b'{"time":"x","lines":1,"last":"' + b"a" * 64 + b'","key":null,"sig":null}\n'
                     b'{"time":"2026')
    writer = CheckpointWriter(path, None)
    writer.write(2, "d" * 64)
    writer.close()
    assert writer.set_aside is not None and writer.set_aside.read_bytes() == b'{"time":"2026'
    checkpoint = last_checkpoint(path)
    assert checkpoint is not None and checkpoint.lines == 2
    assert len(_lines(path)) == 2


def test_keys_are_loaded_from_pem_with_clear_errors(tmp_path: Path, key: Ed25519PrivateKey,
                                                    public_pem: Path) -> None:
    private = tmp_path / "log-signing.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    assert key_id(load_signing_key(private).public_key()) == key_id(load_public_key(public_pem))
    with pytest.raises(ConfigurationError, match="cannot read the log signing key"):
        load_signing_key(tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match="not a PEM private key"):
        load_signing_key(public_pem)
    with pytest.raises(ConfigurationError, match="holds a private key"):
        load_public_key(private)
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ConfigurationError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pem")


def test_dev_keys_writes_a_log_signing_key_pair(tmp_path: Path) -> None:
    assert main(["dev-keys", "--dir", str(tmp_path / "keys")]) == 0
    private = tmp_path / "keys" / "log-signing.pem"
    public = tmp_path / "keys" / "log-signing.pub.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    assert key_id(load_signing_key(private).public_key()) == key_id(load_public_key(public))


# ---------------------------------------------------------------- audit: intact


def test_an_intact_log_passes_and_says_what_it_checked(
    tmp_path: Path, key: Ed25519PrivateKey,
) -> None:
    log = tmp_path / "events.log"
    chain = _signed_log(log, key, lines=25, every=10)
    _append(log, chain, range(25, 28))  # not yet in a checkpoint
    report = _audit(log, key)
    assert report.exit_code == 0
    assert (report.walk.lines, report.walk.unchained, report.read, report.matched) == (28, 0, 3, 3)
    assert report.last_matched is not None and report.last_matched.lines == 25
    text = "\n".join(report.describe())
    assert "28 lines checked" in text and "0 carried no chain" in text
    assert "the last matched: line 25 (events.log:25)" in text
    assert "3 lines after the last checkpoint: none covers them yet" in text
    assert f"signed by key {key_id(key.public_key())}" in text
    assert text.endswith("intact")


def test_progress_reaches_the_size_of_the_log(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    _append(log, Chain(), range(10))
    seen: list[tuple[int, int]] = []
    audit(log, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (log.stat().st_size, log.stat().st_size)


def test_an_empty_log_with_its_checkpoint_of_no_lines_is_intact(
    tmp_path: Path, key: Ed25519PrivateKey,
) -> None:
    log = tmp_path / "events.log"
    log.touch()
    writer = CheckpointWriter(checkpoints_path(log), key)
    writer.write(0, GENESIS)  # a logger that started and stopped
    report = _audit(log, key)
    assert (report.exit_code, report.matched, report.walk.lines) == (0, 1, 0)


# ---------------------------------------------------------------- audit: tampering


def test_an_edited_value_breaks_the_chain_at_the_next_line(
    tmp_path: Path, key: Ed25519PrivateKey,
) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key)
    lines = _lines(log)
    lines[4] = lines[4].replace(b"story 4", b"story X")  # line 5
    _rewrite(log, lines)
    report = _audit(log, key)
    assert report.exit_code == 1
    assert _breaks(report) == ["events.log:6"]
    assert "edited" in report.walk.breaks[0].reason
    assert "  break: events.log:6: the chain breaks: prev is not the hash of the line before" in (
        "\n".join(report.describe()))
    assert report.problem_count == 0  # lines 10 and 20 are as they were


def test_an_inserted_line_breaks_the_chain(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key)
    lines = _lines(log)
    # Forged as well as it can be: linked to the line before it.
    forged = with_prev(line_hash(lines[6][:-1]), orjson.dumps(_event(99))) + b"\n"
    _rewrite(log, [*lines[:7], forged, *lines[7:]])
    report = _audit(log, key)
    assert report.exit_code == 1
    assert _breaks(report) == ["events.log:9"]
    assert report.problem_count == 2  # lines 10 and 20 are now other lines


def test_an_inserted_line_without_prev_breaks_the_chain(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    _append(log, Chain(), range(5))
    lines = _lines(log)
    _rewrite(log, [*lines[:2], orjson.dumps(_event(99)) + b"\n", *lines[2:]])
    report = audit(log)
    assert _breaks(report) == ["events.log:3", "events.log:4"]
    assert "without prev" in report.walk.breaks[0].reason
    assert report.exit_code == 1


def test_a_deleted_line_breaks_the_chain(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key)
    lines = _lines(log)
    del lines[11]  # line 12
    _rewrite(log, lines)
    report = _audit(log, key)
    assert report.exit_code == 1
    assert _breaks(report) == ["events.log:12"]


def test_a_deleted_first_line_breaks_the_chain_at_the_start(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    _append(log, Chain(), range(5))
    _rewrite(log, _lines(log)[1:])
    report = audit(log)
    assert _breaks(report) == ["events.log:1"]
    assert "first line" in report.walk.breaks[0].reason


def test_swapped_lines_break_the_chain(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key)
    lines = _lines(log)
    lines[13], lines[14] = lines[14], lines[13]  # lines 14 and 15
    _rewrite(log, lines)
    report = _audit(log, key)
    assert report.exit_code == 1
    assert _breaks(report) == ["events.log:14", "events.log:15", "events.log:16"]


def test_a_log_cut_short_of_a_checkpoint_is_caught(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key, lines=30, every=10)
    _rewrite(log, _lines(log)[:17])
    report = _audit(log, key)
    assert report.walk.break_count == 0  # what is left is a whole chain
    assert report.exit_code == 1
    assert report.problems == [
        "events.log.checkpoints:2: the log has 17 lines, this checkpoint says it had 20: lines "
        "were cut from its end (1 later checkpoints say so too)"]


def test_a_chain_recomputed_after_an_edit_no_longer_matches_the_signed_checkpoints(
    tmp_path: Path, key: Ed25519PrivateKey,
) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key)
    events = [orjson.loads(line) for line in _lines(log)]
    events[4]["value"]["properties"]["title"] = "rewritten"
    forged = Chain()
    _rewrite(log, [forged.link(orjson.dumps({k: v for k, v in e.items() if k != "prev"}) + b"\n")
                   for e in events])
    report = _audit(log, key)
    assert report.walk.break_count == 0
    assert report.exit_code == 1
    assert report.problem_count == 2
    assert report.problems[0].startswith(
        "events.log.checkpoints:1: line 10 of the log (events.log:10) no longer matches")


def _forge_checkpoints(log: Path, signer: Ed25519PrivateKey | None) -> None:
    """An attacker's own checkpoints of the log as it now is (signed with their own key)."""
    path = checkpoints_path(log)
    path.unlink()
    resumed = Chain.resume(log)
    writer = CheckpointWriter(path, signer)
    writer.write(resumed.lines, resumed.last)
    writer.close()


@pytest.mark.parametrize("signer", ["own key", "unsigned"])
def test_checkpoints_rewritten_without_the_key_are_caught_with_the_public_key(
    tmp_path: Path, key: Ed25519PrivateKey, public_pem: Path, signer: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key)
    _rewrite(log, _lines(log)[:15])  # cut, then checkpoints to match
    _forge_checkpoints(log, Ed25519PrivateKey.generate() if signer == "own key" else None)
    assert main(["audit", "--log", str(log), "--public-key", str(public_pem)]) == 1
    out = capsys.readouterr().out
    why = "which no --public-key has" if signer == "own key" else "unsigned"
    assert "events.log.checkpoints:1: checkpoint of line 15 is not to be trusted: " in out
    assert why in out
    assert out.rstrip().endswith("ALTERED")
    # Without the public key the forgery cannot be told from the real thing: it says so.
    assert main(["audit", "--log", str(log)]) == 0
    assert "signatures were not checked" in capsys.readouterr().out


def test_a_checkpoint_edited_under_its_signature_does_not_verify(
    tmp_path: Path, key: Ed25519PrivateKey,
) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key)
    _rewrite(log, _lines(log)[:15])
    path = checkpoints_path(log)
    records = [json.loads(line) for line in _lines(path)]
    records[1].update(lines=15, last=line_hash(_lines(log)[14][:-1]))  # keeps key and sig
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = _audit(log, key)
    assert report.exit_code == 1
    assert report.problems == [
        "events.log.checkpoints:2: checkpoint of line 15 is not to be trusted: its signature "
        f"does not verify under key {key_id(key.public_key())}"]


def test_checkpoints_signed_by_a_rotated_key_verify_with_both_public_keys(
    tmp_path: Path, key: Ed25519PrivateKey,
) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key, lines=10, every=10)
    newer = Ed25519PrivateKey.generate()
    chain = Chain.resume(log)
    _append(log, chain, range(10, 20))
    CheckpointWriter(checkpoints_path(log), newer).write(chain.lines, chain.last)
    assert audit(log, public_keys=[key.public_key(), newer.public_key()]).exit_code == 0
    only_old = audit(log, public_keys=[key.public_key()])
    assert only_old.exit_code == 1 and "which no --public-key has" in only_old.problems[0]


@pytest.mark.parametrize(("line", "why"), [
    (b"not json", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"time":"t","lines":"10","last":"' + b"a" * 64 + b'","key":null,"sig":null}',
     "`lines` is not a whole number"),
    (b'{"time":"t","lines":10,"last":"ABC","key":null,"sig":null}', "`last` is not"),
    (b'{"time":"t","lines":10,"last":"' + b"a" * 64 + b'","key":"abc","sig":"x"}', "`key`"),
    (b'{"lines":10,"last":"' + b"a" * 64 + b'","key":null,"sig":null}', "no time"),
])
def test_a_malformed_checkpoints_file_is_an_alteration(
    tmp_path: Path, key: Ed25519PrivateKey, line: bytes, why: str,
) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key)
    path = checkpoints_path(log)
    _rewrite(path, [_lines(path)[0], line + b"\n", _lines(path)[1]])
    report = _audit(log, key)
    assert report.exit_code == 1
    assert report.problems[0].startswith("events.log.checkpoints:2: malformed checkpoint: " + why)
    assert report.matched == 2  # the others are still held against the log


def test_checkpoints_out_of_order_are_an_alteration(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key)
    path = checkpoints_path(log)
    _rewrite(path, _lines(path)[::-1])
    report = _audit(log, key)
    assert report.exit_code == 1
    assert "checkpoint out of order: line 10 after one of line 20" in report.problems[0]


def test_a_torn_last_checkpoint_is_a_warning(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key)
    with open(checkpoints_path(log), "ab") as file:
        file.write(b'{"time":"20')
    report = _audit(log, key)
    assert report.exit_code == 0
    assert "events.log.checkpoints:3: a torn checkpoint" in report.warnings[0]


def test_a_missing_checkpoints_file_is_a_warning_without_a_key_and_altered_with_one(
    tmp_path: Path, key: Ed25519PrivateKey, public_pem: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key)
    checkpoints_path(log).unlink()
    assert main(["audit", "--log", str(log)]) == 0
    assert "warning: no checkpoints file at" in capsys.readouterr().out
    assert main(["audit", "--log", str(log), "--public-key", str(public_pem)]) == 1
    assert "problem: no checkpoints file at" in capsys.readouterr().out


def test_an_empty_checkpoints_file_with_a_key_vouches_for_nothing(
    tmp_path: Path, key: Ed25519PrivateKey,
) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key)
    checkpoints_path(log).write_bytes(b"")
    report = _audit(log, key)
    assert report.exit_code == 1 and "holds no checkpoint" in report.problems[0]


# ---------------------------------------------------------------- segments, torn tails, old logs


def _written_in_segments(log: Path, events: int, max_bytes: int) -> Chain:
    """Events written by the real log writer, rotating, each line linked on its way."""
    writer = EventLogWriter(log, max_bytes=max_bytes)
    for n in range(events):
        writer.append([(f"event-{n}", orjson.dumps(_event(n)) + b"\n")])
    writer.close()
    return writer.chain


def test_the_chain_runs_across_segments_and_the_live_file(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    chain = _written_in_segments(log, 12, max_bytes=1500)
    segments = sorted(p.name for p in tmp_path.glob("events.log.0*"))
    assert segments[:2] == ["events.log.000001", "events.log.000002"]
    report = audit(log)
    assert report.exit_code == 0
    assert report.files == [*segments, "events.log"]
    assert report.walk.lines == 12 and report.walk.prev == chain.last
    first_of_second = orjson.loads(_lines(tmp_path / "events.log.000002")[0])
    assert first_of_second["prev"] == line_hash(_lines(tmp_path / "events.log.000001")[-1][:-1])
    resumed = Chain.resume(log)
    assert (resumed.last, resumed.lines) == (chain.last, 12)


def _write_events(log: Path, events: range, max_bytes: int | None = None) -> Chain:
    """The real log writer, started on whatever the log holds, writing one batch per event."""
    writer = EventLogWriter(log, max_bytes=max_bytes)
    for n in events:
        writer.append([(f"event-{n}", orjson.dumps(_event(n)) + b"\n")])
    writer.close()
    return writer.chain


def test_the_writer_keeps_one_chain_across_rotation_and_restarts(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    _write_events(log, range(10), max_bytes=1500)
    restarted = _write_events(log, range(10, 20), max_bytes=1500)  # a logger restart
    _write_events(log, range(20, 22))  # and one without rotation
    files = sorted(p.name for p in tmp_path.glob("events.log.0*"))
    assert len(files) >= 3
    report = audit(log)
    assert report.exit_code == 0 and report.walk.break_count == 0
    assert (report.walk.lines, report.walk.unchained) == (22, 0)
    assert restarted.lines == 20
    assert all(orjson.loads(raw)["prev"] for raw in _lines(log))
    # restore, verify and replay read the chained lines as before: prev is one more key
    assert [line.event["id"] for line in read_all(log) if line.event] == [
        f"event-{n}" for n in range(22)]


def test_after_a_torn_tail_the_writer_chains_on_from_the_last_complete_line(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events.log"
    chain = _write_events(log, range(5))
    with open(log, "ab") as file:  # a crash halfway through the next line
        file.write(Chain(chain.last, chain.lines).link(orjson.dumps(_event(5)))[:50])
    writer = EventLogWriter(log)
    assert writer.set_aside is not None  # healed: the torn bytes set aside
    assert (writer.chain.last, writer.chain.lines) == (chain.last, 5)
    writer.append([("event-5", orjson.dumps(_event(5)) + b"\n")])  # the redelivery
    writer.close()
    report = audit(log)
    assert (report.exit_code, report.walk.lines, report.walk.torn) == (0, 6, None)


def test_the_writer_continues_an_original_servers_log_and_audit_passes(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    shutil.copy(ORIGINAL, log)
    original = _lines(log)
    chain = _write_events(log, range(4))
    first = orjson.loads(_lines(log)[len(original)])
    assert first["prev"] == line_hash(original[-1][:-1])
    assert _lines(log)[: len(original)] == original  # the old lines are left as they were
    assert chain.lines == len(original) + 4
    assert main(["audit", "--log", str(log)]) == 0
    report = audit(log)
    assert (report.walk.unchained, report.walk.lines) == (len(original), len(original) + 4)


def test_a_break_in_a_segment_is_named_by_its_file(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    _written_in_segments(log, 12, max_bytes=1500)
    second = tmp_path / "events.log.000002"
    lines = _lines(second)
    del lines[0]
    _rewrite(second, lines)
    assert _breaks(audit(log)) == ["events.log.000002:1"]


def test_a_removed_segment_breaks_the_chain_at_the_next_file(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    _written_in_segments(log, 20, max_bytes=1000)
    assert (tmp_path / "events.log.000003").exists()
    (tmp_path / "events.log.000002").unlink()
    assert _breaks(audit(log)) == ["events.log.000003:1"]


def test_a_torn_last_line_is_reported_as_torn_not_tampering(
    tmp_path: Path, key: Ed25519PrivateKey,
) -> None:
    log = tmp_path / "events.log"
    chain = _signed_log(log, key)
    torn = chain.link(orjson.dumps(_event(20)))[:40]  # a crash mid-write
    with open(log, "ab") as file:
        file.write(torn)
    report = _audit(log, key)
    assert report.exit_code == 0
    assert report.walk.torn is not None
    assert (report.walk.torn.file, report.walk.torn.number) == ("events.log", 21)
    assert "events.log:21: torn" in "\n".join(report.describe())
    # The logger heals it on start, and the chain goes on from the last complete line.
    aside = heal_torn_tail(log)
    assert aside is not None and aside.read_bytes() == torn
    resumed = Chain.resume(log)
    _append(log, resumed, range(21, 25))
    CheckpointWriter(checkpoints_path(log), key).write(resumed.lines, resumed.last)
    report = _audit(log, key)
    assert (report.exit_code, report.walk.lines, report.walk.torn) == (0, 24, None)
    assert report.last_matched is not None and report.last_matched.lines == 24


def test_a_line_without_newline_inside_the_log_is_a_break(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    chain = Chain()
    _append(log, chain, range(3))
    segment = tmp_path / "events.log.000001"
    log.rename(segment)
    segment.write_bytes(segment.read_bytes()[:-1])  # its last newline gone
    _append(log, chain, range(3, 5))
    report = audit(log)
    assert report.exit_code == 1
    assert _breaks(report)[0] == "events.log.000001:3"


def test_an_original_servers_log_continued_by_the_logger_is_intact(
    tmp_path: Path, key: Ed25519PrivateKey,
) -> None:
    log = tmp_path / "events.log"
    shutil.copy(ORIGINAL, log)
    original = _lines(log)
    chain = _signed_log(log, key, lines=10, every=5)
    first = orjson.loads(_lines(log)[len(original)])
    assert first["prev"] == line_hash(original[-1][:-1])
    report = _audit(log, key)
    assert report.exit_code == 0
    assert (report.walk.lines, report.walk.unchained) == (len(original) + 10, len(original))
    assert f"{len(original)} carried no chain (an original server's lines" in "\n".join(
        report.describe())
    assert report.walk.prev == chain.last
    # restore and replay still read every line
    assert all(line.problem is None for line in read_all(log))


def test_an_original_servers_line_removed_is_caught_by_a_checkpoint(
    tmp_path: Path, key: Ed25519PrivateKey,
) -> None:
    log = tmp_path / "events.log"
    shutil.copy(ORIGINAL, log)
    _signed_log(log, key, lines=10, every=5)
    lines = _lines(log)
    del lines[3]  # unchained lines link to nothing: the chain alone cannot see this
    _rewrite(log, lines)
    report = _audit(log, key)
    assert report.walk.break_count == 0
    assert report.exit_code == 1 and "no longer matches" in report.problems[0]


# ---------------------------------------------------------------- the command


def test_audit_defaults_to_the_event_log_setting_and_its_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: Ed25519PrivateKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key)
    monkeypatch.setenv("THELCA_EVENT_LOG", str(log))
    assert main(["audit"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{log}: 20 lines checked in 1 file (events.log)")
    assert f"2 read from {checkpoints_path(log)}" in out


def test_audit_holds_the_log_against_a_witness_copy_of_the_checkpoints(
    tmp_path: Path, key: Ed25519PrivateKey, public_pem: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = tmp_path / "events.log"
    _signed_log(log, key, lines=30, every=10)
    witness = tmp_path / "witness.checkpoints"
    shutil.copy(checkpoints_path(log), witness)
    _rewrite(log, _lines(log)[:20])
    _rewrite(checkpoints_path(log), _lines(checkpoints_path(log))[:2])  # cut to match
    assert main(["audit", "--log", str(log), "--public-key", str(public_pem)]) == 0
    assert main(["audit", "--log", str(log), "--public-key", str(public_pem),
                 "--checkpoints", str(witness)]) == 1
    assert "the log has 20 lines, this checkpoint says it had 30" in capsys.readouterr().out


def test_audit_exits_3_when_the_log_or_a_key_cannot_be_read(
    tmp_path: Path, key: Ed25519PrivateKey, public_pem: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = tmp_path / "events.log"
    assert main(["audit", "--log", str(log)]) == 3
    assert "no event log at" in capsys.readouterr().err
    _signed_log(log, key)
    assert main(["audit", "--log", str(log), "--public-key", str(tmp_path / "no.pem")]) == 3
    assert "cannot read the public key" in capsys.readouterr().err
    assert main(["audit", "--log", str(log), "--public-key", str(log)]) == 3
    assert "is not a PEM public key" in capsys.readouterr().err
    (tmp_path / "events.log.000001").mkdir()  # unreadable as a file, even for root
    assert main(["audit", "--log", str(log)]) == 3
    error = capsys.readouterr().err
    assert "events.log.000001" in error and "Traceback" not in error


def test_audit_exits_3_when_the_checkpoints_cannot_be_read(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    _append(log, Chain(), range(3))
    checkpoints_path(log).mkdir()
    assert main(["audit", "--log", str(log)]) == 3


def test_audit_prints_at_most_fifty_breaks_and_counts_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    log = tmp_path / "events.log"
    _append(log, Chain(), range(120))
    _rewrite(log, _lines(log)[::-1])  # every line out of place
    assert main(["audit", "--log", str(log)]) == 1
    out = capsys.readouterr().out
    assert "the chain breaks at 120 places" in out
    assert out.count("  break: ") == 50 and "... and 70 more breaks" in out


def test_an_intact_chain_is_checked_without_parsing_a_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fast path: lines the logger wrote are only hashed and compared, block by block."""
    log = tmp_path / "events.log"
    _append(log, Chain(), range(200))

    def parse(line: bytes) -> str | None:
        raise AssertionError("took the line-by-line way")

    monkeypatch.setattr("thelca.audit.walk.prev_of", parse)
    report = audit(log)
    assert (report.exit_code, report.walk.lines) == (0, 200)
