"""Following a log's hash chain block by block, and noting where it breaks.

`ChainWalk` takes the blocks of a log in order, as any reader passes them (the
auditor, or restore while it folds): lines the logger wrote are only hashed
and compared, a block at a time; a block where that fails is walked line by
line to say where the chain breaks (a line edited, inserted, removed or moved).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from hashlib import sha256
from typing import NamedTuple

from thelca.audit.chain import GENESIS, prev_of
from thelca.eventlog import Block

SHOWN = 50  # breaks and problems kept to print; the rest are counted

EDITED = ("the chain breaks: prev is not the hash of the line before (one of the two was edited, "
          "or lines were inserted, removed or reordered between them)")
FIRST = ("the chain breaks: the log's first line has a prev that is not 64 zeros (lines before "
         "it were removed, or it was edited)")
UNLINKED = ("the chain breaks: a line without prev after chained lines (inserted, or its prev "
            "was removed)")
TORN_INSIDE = "a line without its newline, and the log goes on after it"


class Break(NamedTuple):
    """Where the chain breaks: the file, the line number in that file, and what was seen."""

    file: str
    number: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.number}: {self.reason}"


class ChainWalk:
    """Follows the hash chain through a log's blocks, in order, and notes where it breaks.

    `lines` counts the complete lines seen, `unchained` those of an original
    server's log before the chain starts; `torn` is a last line without its
    newline (not part of the log, not a break), known once every block was fed.
    """

    def __init__(self) -> None:
        self.prev = GENESIS  # the hash of the last line seen
        self.chained = False  # a line with prev was seen: from then on every line has one
        self.lines = 0
        self.unchained = 0
        self.breaks: list[Break] = []
        self.break_count = 0
        self.torn: Break | None = None

    def watch(self, blocks: Iterable[Block]) -> Iterator[Block]:
        """The blocks, unchanged, each followed along the way."""
        for block in blocks:
            self.feed(block)
            yield block

    def feed(self, block: Block) -> None:
        if self.torn is not None:  # the torn line was not the last after all
            self._break(self.torn.file, self.torn.number, TORN_INSIDE)
            self.torn = None
        if block.lines:
            hashes = [sha256(raw).hexdigest() for raw in block.lines]
            if self._linked(block.lines, hashes):
                self.chained = True
            else:
                self._walk(block, hashes)
            self.prev = hashes[-1]
            self.lines += len(block.lines)
        if block.torn is not None:
            self.torn = Break(block.file, block.first + len(block.lines),
                              "torn: the last line has no newline (a crash mid-write); it is "
                              "not part of the log, and not tampering")

    def _linked(self, lines: list[bytes], hashes: list[str]) -> bool:
        """The hot path: whether every line ends with the prev of the line before it.

        A block at a time, each step a C loop (comprehensions, map): the audit
        costs little more than reading and hashing the lines.
        """
        # Each line the logger wrote ends with HEAD + the hash before it + END.
        tails = [f',"prev":"{prev}"}}'.encode() for prev in [self.prev, *hashes[:-1]]]
        return all(map(bytes.endswith, lines, tails))

    def _walk(self, block: Block, hashes: list[str]) -> None:
        """Line by line, with each line's number: the prefix without a chain, and breaks."""
        prev = self.prev
        for number, (raw, hashed) in enumerate(zip(block.lines, hashes, strict=True), block.first):
            carried = prev_of(raw)
            if carried is None:
                if self.chained:
                    self._break(block.file, number, UNLINKED)
                else:
                    self.unchained += 1
            else:
                if carried != prev:
                    first = self.lines == 0 and number == block.first
                    self._break(block.file, number, FIRST if first else EDITED)
                self.chained = True
            prev = hashed

    def _break(self, file: str, number: int, reason: str) -> None:
        self.break_count += 1
        if len(self.breaks) < SHOWN:
            self.breaks.append(Break(file, number, reason))

