"""The auditor: walk a log's hash chain and hold it against its checkpoints.

`audit()` streams every line of the log (segments, then the live file), in
blocks, in constant memory; each line is hashed once. It finds where the chain
breaks (a line edited, inserted, removed or moved), a log shorter than a
checkpoint says, a line that no longer matches its checkpoint (a recomputed
chain), and checkpoints that are malformed or whose signature does not verify.
`ChainWalk` (thelca.audit.walk) follows the chain; this module holds the
checkpoints against the lines as they pass, and reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from thelca.audit.chain import GENESIS
from thelca.audit.checkpoints import Checkpoint, checkpoints_path, key_id, read_lines
from thelca.audit.walk import SHOWN, ChainWalk
from thelca.eventlog import Block, LogSnapshot


@dataclass
class AuditReport:
    """What an audit found, and the exit status it calls for (0 intact, 1 altered)."""

    log: str
    files: list[str] = field(default_factory=list)
    walk: ChainWalk = field(default_factory=ChainWalk)
    checkpoints: str = ""
    read: int = 0  # checkpoints read (well-formed ones)
    matched: int = 0  # checkpoints whose line matched
    last_matched: Checkpoint | None = None
    last_matched_at: str = ""  # file:line of the line it matched
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def altered(self) -> bool:
        return bool(self.walk.break_count or self.problem_count)

    @property
    def exit_code(self) -> int:
        return 1 if self.altered else 0

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < SHOWN:
            self.problems.append(text)

    def describe(self) -> list[str]:
        """The report as lines for a person: counts, breaks, checkpoints, the verdict."""
        walk = self.walk
        files = f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}"
        out = [f"{self.log}: {walk.lines} lines checked in {files} ({', '.join(self.files)}); "
               f"{walk.unchained} carried no chain"
               + (" (an original server's lines, before the chain starts)"
                  if walk.unchained else "")]
        out.append("the chain is unbroken" if not walk.break_count
                   else f"the chain breaks at {walk.break_count} places")
        out += [f"  break: {b}" for b in walk.breaks]
        out += _more(walk.break_count, len(walk.breaks), "break")
        if walk.torn is not None:
            out.append(f"  {walk.torn}")
        out.append(self._checkpoints_line())
        if not self.altered and self.last_matched and walk.lines > self.last_matched.lines:
            out.append(f"{walk.lines - self.last_matched.lines} lines after the last checkpoint: "
                       "none covers them yet")
        out += [f"  problem: {p}" for p in self.problems]
        out += _more(self.problem_count, len(self.problems), "problem")
        out += [f"warning: {w}" for w in self.warnings]
        out.append("ALTERED" if self.altered else "intact")
        return out

    def _checkpoints_line(self) -> str:
        text = f"checkpoints: {self.read} read from {self.checkpoints}, {self.matched} matched"
        last = self.last_matched
        if last is None:
            return text + "; none matched"
        signer = f"signed by key {last.key}" if last.key else "unsigned"
        return (f"{text}; the last matched: line {last.lines} ({self.last_matched_at}) at "
                f"{last.time}, {signer}")


def _more(count: int, shown: int, what: str) -> list[str]:
    return [f"  ... and {count - shown} more {what}s"] if count > shown else []


class CheckpointCheck:
    """Holds the log's lines, as they stream past, against the checkpoints file, in step.

    Checkpoints are read one at a time as the walk reaches their line, so a
    long history of them takes no memory either.
    """

    def __init__(self, path: Path, keys: dict[str, Ed25519PublicKey], report: AuditReport):
        self.path = path
        self.keys = keys
        self.report = report
        self._previous = 0  # the line count of the last checkpoint taken in order
        self._records = self._checkpoints()
        self.missing = False
        try:
            self._next = next(self._records, None)
        except FileNotFoundError:
            self.missing = True
            self._next = None

    def _checkpoints(self) -> Iterator[tuple[int, Checkpoint]]:
        """The checkpoints to hold the log against, with their line numbers in the file;
        malformed, unverified or out-of-order ones are reported and passed over."""
        name = self.path.name
        for number, raw, torn in read_lines(self.path):
            if torn:  # the last line only: a crash while the logger wrote it
                self.report.warnings.append(f"{name}:{number}: a torn checkpoint (a crash "
                                            "mid-write), not read")
                continue
            try:
                checkpoint = Checkpoint.parse(raw)
            except ValueError as error:
                self.report.problem(f"{name}:{number}: malformed checkpoint: {error}")
                continue
            self.report.read += 1
            if self.keys:
                why = checkpoint.problem_with_signature(self.keys)
                if why is not None:
                    self.report.problem(f"{name}:{number}: checkpoint of line {checkpoint.lines} "
                                        f"is not to be trusted: {why}")
                    continue
            if checkpoint.lines < self._previous:
                self.report.problem(f"{name}:{number}: checkpoint out of order: line "
                                    f"{checkpoint.lines} after one of line {self._previous}")
                continue
            self._previous = checkpoint.lines
            yield number, checkpoint

    def check(self, block: Block, before: int, after: int) -> None:
        """Every checkpoint of a line in this block (lines before+1 .. after of the log)."""
        while self._next is not None and self._next[1].lines <= after:
            number, checkpoint = self._next
            if checkpoint.lines == 0:
                self._compare(number, checkpoint, GENESIS, "the start of the log")
            elif checkpoint.lines > before:  # always, but an index must not go wrong
                index = checkpoint.lines - before - 1
                raw = block.lines[index]
                where = f"{block.file}:{block.first + index}"
                self._compare(number, checkpoint, sha256(raw).hexdigest(), where)
            self._next = next(self._records, None)

    def _compare(self, number: int, checkpoint: Checkpoint, actual: str, where: str) -> None:
        if actual == checkpoint.last:
            self.report.matched += 1
            self.report.last_matched = checkpoint
            self.report.last_matched_at = where
            return
        self.report.problem(
            f"{self.path.name}:{number}: line {checkpoint.lines} of the log ({where}) no longer "
            "matches this checkpoint: the log up to there was changed (lines edited, inserted or "
            "removed, or the chain recomputed)")

    def finish(self, lines: int) -> None:
        """After the last line: checkpoints still waiting say the log was longer."""
        self.check(Block("", 1, []), lines, lines)  # those of line 0, for a log without lines
        if self._next is None:
            return
        number, checkpoint = self._next
        later = sum(1 for _ in self._records)
        self._next = None
        self.report.problem(
            f"{self.path.name}:{number}: the log has {lines} lines, this checkpoint says it had "
            f"{checkpoint.lines}: lines were cut from its end"
            + (f" ({later} later checkpoints say so too)" if later else ""))


def audit(
    log: str | Path,
    checkpoints: str | Path | None = None,
    public_keys: Sequence[Ed25519PublicKey] = (),
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Walk the log's chain and hold it against its checkpoints (default `<log>.checkpoints`).

    With public keys, every checkpoint must be signed by one of them. progress,
    when given, is called after each block with (bytes read, bytes in all).
    Raises FileNotFoundError when there is no log, OSError when the log or the
    checkpoints file cannot be read.
    """
    snapshot = LogSnapshot(log)
    path = Path(checkpoints) if checkpoints is not None else checkpoints_path(log)
    report = AuditReport(str(log), files=snapshot.files, checkpoints=str(path))
    keys = {key_id(public): public for public in public_keys}
    check = CheckpointCheck(path, keys, report)
    walk = report.walk
    for block in snapshot.blocks():
        before = walk.lines
        walk.feed(block)
        check.check(block, before, walk.lines)
        if progress is not None:
            progress(snapshot.bytes_read, snapshot.total_bytes)
    check.finish(walk.lines)
    _judge_coverage(report, check, bool(keys))
    return report


def _judge_coverage(report: AuditReport, check: CheckpointCheck, keyed: bool) -> None:
    """What the checkpoints could not vouch for: an error with a public key, else a warning."""
    if check.missing:
        text = (f"no checkpoints file at {check.path}: a log cut short or a recomputed chain "
                "cannot be detected")
        if keyed:
            report.problem(text)
        else:
            report.warnings.append(text)
        return
    if keyed and report.read == 0 and report.walk.lines:
        report.problem(f"{check.path} holds no checkpoint: nothing vouches for the log")
    if not keyed and report.read:
        report.warnings.append("the checkpoints' signatures were not checked (no --public-key): "
                               "checkpoints rewritten along with the log are caught only with it")
