"""The fold: the log's item events applied in order, each item kept at its latest line.

A fold keeps the version of every item and the latest value of the items
changed since the last write; every FLUSH_ITEMS changed items it hands them
to its writer (restore), each at its final version, so each item is written
about once however often the log changed it. Verify folds without a writer
and keeps everything.

Link events go to the fold's `links` (thelca.restore.links), which keeps
every live link until the end.

Lines it cannot use are counted and reported with their file and line
number, never fatal: a torn last line, a line that is not JSON, an event
that contradicts the state before it. Lines of types the store does not
use (reads, searches, refusals, the original server's `Server started`) are
skipped and counted by type.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson

from thelca.domain.model import StoredItem
from thelca.eventlog.format import TORN
from thelca.eventlog.reader import Block
from thelca.restore.items import item_of, next_version, well_formed
from thelca.restore.links import LINK_CHANGES, LinkFold
from thelca.restore.report import AFTER_UNTIL, Problem, RestoreReport
from thelca_client.contract import ITEM_CREATED, ITEM_UPDATED, parse_time

# Changed items held in memory between two writes to the store: a few hundred
# MB at most, and few enough writes that a million-event log restores at
# close to the speed of reading it.
FLUSH_ITEMS = 500_000
__all__ = ["AFTER_UNTIL", "FLUSH_ITEMS", "Changed", "Fold", "Writer", "without_cyclic_gc"]

# item id -> the log line of its latest event. Keeping the line rather than the
# decoded event lets every decoded event be freed at once, which makes the fold
# about twice as fast (and small); lines are decoded again only when written.
Changed = dict[str, bytes]
Writer = Callable[[Changed, dict[str, int], dict[str, int]], None]


class Fold:
    """The items a log describes: every item's version, and the values changed since a flush.

    `versions[id]` is the item's version so far, `changed[id]` the line of its
    latest event, and `flushed[id]` the version it had when last written. `flush`
    (restore) is called with them whenever FLUSH_ITEMS items have changed and
    must write those; verify gives no flush and keeps everything.
    """

    def __init__(
        self,
        *,
        until: datetime | None = None,
        flush: Writer | None = None,
        flush_items: int = FLUSH_ITEMS,
        track_flushed: bool = True,
    ) -> None:
        self.until = until
        self.flush = flush
        self.flush_items = flush_items
        self.track_flushed = track_flushed  # only a writer that climbs versions needs it
        self.versions: dict[str, int] = {}
        self.changed: Changed = {}
        self.flushed: dict[str, int] = {}
        # Updates logged ahead of their item's version, by item and version, with
        # where they stand in the log: with several workers the log is not in version
        # order (each worker publishes after its own commit, on its own connection).
        self.held: dict[str, dict[int, tuple[str, int, bytes]]] = {}
        self.files: list[str] = []  # in the order read, to report problems in log order
        self.report = RestoreReport()
        self.links = LinkFold(self.report, until)

    def run(  # noqa: PLR0912 - the hot loop is inlined on purpose (see below)
        self, blocks: Iterable[Block], progress: Callable[[], None] | None = None
    ) -> None:
        """Apply every line of every block; call progress after each block.

        This is restore's hot loop: it decodes lines itself rather than through
        LogLine objects, keeps everything in locals, and takes the slow path
        (`_odd_line`, `_item_event`) only for what is not a well-formed event.
        """
        loads = orjson.loads
        versions, changed = self.versions, self.changed
        problems = self.report.problems
        until = self.until
        applied = 0
        for block in blocks:
            name = block.file
            if not self.files or self.files[-1] != name:
                self.files.append(name)
            for number, raw in enumerate(block.lines, block.first):
                try:
                    event = loads(raw)
                    kind = event["type"]
                except (orjson.JSONDecodeError, RecursionError, KeyError, TypeError):
                    self._odd_line(name, number, raw)
                    continue
                if kind != ITEM_CREATED and kind != ITEM_UPDATED:  # noqa: PLR1714 - hot loop
                    self._other_event(kind, event, raw, name, number)
                    continue
                # The common case inline: a well-formed event at the next version.
                value = event.get("value")
                item_id = value.get("id") if type(value) is dict else None
                if type(item_id) is str and until is None and well_formed(value):
                    current = versions.get(item_id)
                    if current is None:
                        version = 1 if kind == ITEM_CREATED else 0  # 0: does not follow
                    else:
                        version = current + 1 if kind == ITEM_UPDATED else 0
                    logged = event.get("version")
                    if version and (logged is None or logged == version):
                        versions[item_id] = version
                        changed[item_id] = raw
                        applied += 1
                        if self.held and item_id in self.held:
                            self._release(item_id)
                        continue
                why = self._item_event(kind, event, raw, name, number)
                if why is not None:
                    problems.append(Problem(name, number, why))
            self.report.lines += len(block.lines)
            if block.torn is not None:
                self.report.lines += 1
                problems.append(Problem(name, block.first, TORN))
            if len(changed) >= self.flush_items:
                self.finish()
            if progress is not None:
                progress()
        self.report.applied += applied

    def _other_event(
        self, kind: Any, event: dict[str, Any], raw: bytes, name: str, number: int
    ) -> None:
        """A line that is no item event: a link event is applied, anything else skipped."""
        if type(kind) is str and kind in LINK_CHANGES:
            why = self.links.apply(kind, event, raw, name, number)
            if why is not None:
                self.report.problems.append(Problem(name, number, why))
        else:
            self.report.skipped[kind if type(kind) is str else "(no type)"] += 1

    def _odd_line(self, name: str, number: int, raw: bytes) -> None:
        """A line that is not JSON, not an object, or has no type."""
        try:
            event = orjson.loads(raw)
        except (orjson.JSONDecodeError, RecursionError):
            self.report.problems.append(Problem(name, number, "not JSON"))
            return
        if type(event) is not dict:
            self.report.problems.append(Problem(name, number, "not a JSON object"))
        else:
            self.report.skipped["(no type)"] += 1

    def _item_event(
        self, kind: str, event: dict[str, Any], raw: bytes, name: str, number: int
    ) -> str | None:
        """The slow path of an item event: --until, or something malformed to explain."""
        if self.until is not None:
            try:
                if parse_time(event["time"]) > self.until:
                    self.report.skipped[AFTER_UNTIL] += 1
                    return None
            except (KeyError, TypeError, ValueError) as error:
                return f"{kind} event is malformed: its time cannot be read: {error}"
        value = event.get("value")
        if type(value) is not dict:
            return f"{kind} event is malformed: value is not an item"
        if not well_formed(value):
            return (f"{kind} event is malformed: id, created_at and created_by must be "
                    "strings and properties an object or null")
        item_id = value["id"]
        current = self.versions.get(item_id)
        logged = event.get("version")
        if kind == ITEM_UPDATED and type(logged) is int and logged > (current or 0) + 1:
            self.held.setdefault(item_id, {})[logged] = (name, number, raw)
            return None
        why = next_version(kind, item_id, current, logged)
        if why is None:
            self.versions[item_id] = 1 if current is None else current + 1
            self.changed[item_id] = raw
            self.report.applied += 1
            if item_id in self.held:
                self._release(item_id)
        return why

    def _release(self, item_id: str) -> None:
        """Apply the held updates of an item that now follow its version."""
        waiting = self.held[item_id]
        while (version := self.versions[item_id] + 1) in waiting:
            self.changed[item_id] = waiting.pop(version)[2]
            self.versions[item_id] = version
            self.report.applied += 1
        if not waiting:
            del self.held[item_id]

    def settle_held(self) -> None:
        """Report the held updates whose earlier versions never came, in log order."""
        for item_id, waiting in self.held.items():
            for version, (name, number, _) in waiting.items():
                why = (f"item {item_id} is updated before it is created"
                       if item_id not in self.versions else
                       f"item {item_id} is updated to version {version} but the log never "
                       f"reached version {version - 1}")
                self.report.problems.append(Problem(name, number, why))
        self.held.clear()
        self.report.problems.extend(self.links.settle_held())
        order = {name: index for index, name in enumerate(self.files)}
        self.report.problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line))

    def finish(self) -> None:
        """Write what has changed since the last flush (restore); verify keeps it instead."""
        if self.changed and self.flush is not None:
            self.flush(self.changed, self.versions, self.flushed)
            if self.track_flushed:
                versions = self.versions
                self.flushed.update((item_id, versions[item_id]) for item_id in self.changed)
            self.changed.clear()

    def items(self) -> Iterator[StoredItem]:
        """The folded items not written yet (all of them, when nothing flushes)."""
        for item_id, raw in self.changed.items():
            yield StoredItem(item_of(raw), self.versions[item_id])


@contextmanager
def without_cyclic_gc() -> Iterator[None]:
    """Pause Python's cycle collector: the fold makes millions of objects and no cycles,
    and the collector's passes over them cost about a third of a restore."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
