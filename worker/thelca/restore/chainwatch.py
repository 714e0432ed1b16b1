"""The log's hash chain, followed while restore folds the log.

A small log is followed in line: each block is hashed as it passes, before
the fold applies it, and restore stops at the first block where the chain
breaks. Hashing every line costs about a fifth of a restore, so a big log is
followed by a process of its own beside the fold (on a machine with a core to
spare that costs restore nothing), and a break is known at the end.
Either way the walk is audit's own (thelca.audit.walk.ChainWalk).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import AbstractContextManager
from multiprocessing import get_context
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from thelca.audit.walk import ChainWalk
from thelca.errors import ChainBroken
from thelca.eventlog.reader import Block, LogSnapshot

BESIDE_BYTES = 64 << 20  # a log this big is followed beside the fold, not in line


class ChainFound(NamedTuple):
    """What a walk of the chain found: the lines walked, how many carried no chain, where
    it breaks (the first few) and how often."""

    lines: int
    unchained: int
    break_count: int
    breaks: list[str]

    @classmethod
    def of(cls, walk: ChainWalk) -> ChainFound:
        return cls(walk.lines, walk.unchained, walk.break_count, [str(b) for b in walk.breaks])


def follow(log: Path) -> ChainFound:
    """Walk the whole log's chain: what the process beside the fold runs."""
    walk = ChainWalk()
    for _ in walk.watch(LogSnapshot(log).blocks()):
        pass
    return ChainFound.of(walk)


class ChainWatch(AbstractContextManager["ChainWatch"]):
    """Follows the chain of the log restore is reading, in line or beside it.

    `blocks(snapshot)` is what the fold should read; once it has, `found()`
    says what the walk found. Unless breaks are accepted, a break raises
    ChainBroken: at its block when followed in line, from found() otherwise.
    """

    def __init__(self, log: Path, snapshot: LogSnapshot, *, accept_broken: bool) -> None:
        self.log = log
        self.accept_broken = accept_broken
        self._walk = ChainWalk()
        self._pool: ProcessPoolExecutor | None = None
        self._beside: Future[ChainFound] | None = None
        if snapshot.total_bytes >= BESIDE_BYTES:
            # spawn, not fork: the parent holds the store's connection and open files
            self._pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
            self._beside = self._pool.submit(follow, log)

    def blocks(self, snapshot: LogSnapshot) -> Iterable[Block]:
        if self._beside is not None:
            return snapshot.blocks()
        watched = self._walk.watch(snapshot.blocks())
        return watched if self.accept_broken else self._unbroken(watched)

    def _unbroken(self, blocks: Iterable[Block]) -> Iterator[Block]:
        for block in blocks:  # the walk has followed each block before it comes out
            if self._walk.break_count:
                raise ChainBroken(str(self._walk.breaks[0]), self._walk.break_count)
            yield block

    def found(self) -> ChainFound:
        """What the walk found (waiting for the process beside); ChainBroken on a break
        that is not accepted, OSError when the process beside could not read the log."""
        found = ChainFound.of(self._walk) if self._beside is None else self._beside.result()
        if found.break_count and not self.accept_broken:
            raise ChainBroken(found.breaks[0], found.break_count)
        return found

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
