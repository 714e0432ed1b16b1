"""Rebuild an item store from the event log, to its end or to a moment in time; verify one.

The log (its segments, then the live file) is streamed, never loaded whole.
A fold keeps the version of every item and the latest value of the items
changed since the last write; every FLUSH_ITEMS changed items it writes them
to the store, each at its final version, in one transaction (or, for a
backend without the bulk load, through ordinary transactions, one version at
a time). So each item is written about once however often the log changed it.

Restore publishes nothing. Lines it cannot use are counted and reported with
their file and line number, never fatal: a torn last line, a line that is not
JSON, an event that contradicts the state before it. Lines of types the item
store does not use (reads, refusals, the original server's `Server started`,
`Item search`, `Link ...` lines) are skipped and counted by type.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from thelca.domain.model import Item, StoredItem
from thelca.eventlog import TORN, Block, LogSnapshot
from thelca.stores.base import BulkItemLoader, ItemRow, ItemStore
from thelca_client.contract import ITEM_CREATED, ITEM_UPDATED, parse_time

# Changed items held in memory between two writes to the store: a few hundred
# MB at most, and few enough writes that a million-event log restores at
# close to the speed of reading it.
FLUSH_ITEMS = 500_000
TRANSACTION_ITEMS = 1000  # per transaction on a store without the bulk load
AFTER_UNTIL = "after --until"


class Problem(NamedTuple):
    """A line restore could not use, and why."""

    file: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.why}" if self.file else f"{self.line}: {self.why}"


@dataclass
class RestoreReport:
    lines: int = 0
    applied: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    items: int = 0

    def summary(self) -> str:
        parts = [f"{self.lines} lines read", f"{self.applied} events applied"]
        parts += [f"{count} {kind!r} skipped" for kind, count in sorted(self.skipped.items())]
        parts.append(f"{len(self.problems)} problem lines")
        parts.append(f"{self.items} items restored")
        return ", ".join(parts)

    def describe(self, items_label: str = "items restored") -> list[str]:
        """The report as lines of text for a person, problem lines not included."""
        text = [f"{'lines read:':<18}{self.lines}", f"{'events applied:':<18}{self.applied}"]
        if self.skipped:
            text.append(f"{'lines skipped:':<18}{sum(self.skipped.values())}")
            width = max(len(kind) for kind in self.skipped)
            text += [f"  {kind:<{width}}  {count}" for kind, count in sorted(
                self.skipped.items())]
        text.append(f"{'problem lines:':<18}{len(self.problems)}")
        text.append(f"{items_label + ':':<18}{self.items}")
        return text


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
        skipped, problems = self.report.skipped, self.report.problems
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
                    skipped[kind if type(kind) is str else "(no type)"] += 1
                    continue
                # The common case inline: a well-formed event at the next version.
                value = event.get("value")
                item_id = value.get("id") if type(value) is dict else None
                if type(item_id) is str and until is None and _well_formed(value):
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
        if not _well_formed(value):
            return (f"{kind} event is malformed: id, created_at and created_by must be "
                    "strings and properties an object or null")
        item_id = value["id"]
        current = self.versions.get(item_id)
        logged = event.get("version")
        if kind == ITEM_UPDATED and type(logged) is int and logged > (current or 0) + 1:
            self.held.setdefault(item_id, {})[logged] = (name, number, raw)
            return None
        why = _next_version(kind, item_id, current, logged)
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
            yield StoredItem(_item(raw), self.versions[item_id])


def _well_formed(value: dict[str, Any]) -> bool:
    properties = value.get("properties")
    return (type(value.get("id")) is str and type(value.get("created_at")) is str
            and type(value.get("created_by")) is str
            and (properties is None or type(properties) is dict))


def _next_version(kind: str, item_id: str, current: int | None, logged: Any) -> str | None:
    """Why this event cannot follow the item's current version, or None when it can."""
    if kind == ITEM_CREATED:
        if current is not None:
            return f"item {item_id} is created twice"
        version = 1
    elif current is None:
        return f"item {item_id} is updated before it is created"
    else:
        version = current + 1
    if logged is not None and logged != version:
        return (f"item {item_id} is logged at version {logged} "
                f"but the log so far makes it version {version}")
    return None


def _item(raw: bytes) -> Item:
    """The Item of a log line the fold has checked; properties null means {}."""
    return Item.from_json(orjson.loads(raw)["value"])


# ---------------------------------------------------------------- restore


def restore(
    log_path: str | Path,
    store: ItemStore,
    *,
    until: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
    flush_items: int = FLUSH_ITEMS,
) -> RestoreReport:
    """Apply the log's item events to an (empty) store; return what happened.

    progress, when given, is called now and then with (bytes read, bytes in all).
    Raises FileNotFoundError when there is no log.
    """
    snapshot = LogSnapshot(log_path)
    if isinstance(store, BulkItemLoader):
        fold = Fold(until=until, flush=_bulk_writer(store), flush_items=flush_items,
                    track_flushed=False)
    else:
        fold = Fold(until=until, flush=_transaction_writer(store), flush_items=flush_items)
    tick = None
    if progress is not None:
        tick = lambda: progress(snapshot.bytes_read, snapshot.total_bytes)  # noqa: E731
    with without_cyclic_gc():
        fold.run(snapshot.blocks(), tick)
        fold.finish()
    fold.settle_held()
    fold.report.items = store.count_items()
    return fold.report


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


def _bulk_writer(store: BulkItemLoader) -> Writer:
    def write(changed: Changed, versions: dict[str, int], flushed: dict[str, int]) -> None:
        loads, dumps = orjson.loads, orjson.dumps

        def rows() -> Iterator[ItemRow]:
            for item_id in sorted(changed):
                value = loads(changed[item_id])["value"]
                yield (item_id, value["created_at"], value["created_by"],
                       dumps(value.get("properties") or {}), versions[item_id])

        store.load_items(rows())

    return write


def _transaction_writer(store: ItemStore) -> Writer:
    """Through the ordinary interface: add at version 1, then replace up to the version."""

    def write(changed: Changed, versions: dict[str, int], flushed: dict[str, int]) -> None:
        pending = list(changed.items())
        for start in range(0, len(pending), TRANSACTION_ITEMS):
            with store.transaction() as tx:
                for item_id, raw in pending[start:start + TRANSACTION_ITEMS]:
                    item = _item(raw)
                    written = flushed.get(item_id, 0)
                    if written == 0:
                        tx.add_item(item)
                    for version in range(max(2, written + 1), versions[item_id] + 1):
                        tx.replace_item(item, version)

    return write


# ---------------------------------------------------------------- verify


@dataclass(frozen=True)
class Difference:
    item_id: str
    kind: str  # "missing" (in the log, not the store), "extra", or "different"
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.item_id}: {self.detail}"


@dataclass
class VerifyReport:
    log: RestoreReport
    log_items: int = 0
    store_items: int = 0
    differences: list[Difference] = field(default_factory=list)


def verify(
    log_path: str | Path, store: ItemStore, *, until: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Fold the log in memory and compare it, item by item, with the store.

    progress, when given, is called now and then with (bytes read, bytes in all).
    """
    fold = Fold(until=until)
    snapshot = LogSnapshot(log_path)
    tick = None
    if progress is not None:
        tick = lambda: progress(snapshot.bytes_read, snapshot.total_bytes)  # noqa: E731
    with without_cyclic_gc():
        fold.run(snapshot.blocks(), tick)
    fold.settle_held()
    report = VerifyReport(fold.report, log_items=len(fold.versions))
    expected = {stored.item.id: stored for stored in fold.items()}
    for have in store.items():
        report.store_items += 1
        want = expected.pop(have.item.id, None)
        if want is None:
            report.differences.append(Difference(
                have.item.id, "extra", f"version {have.version} in the store, not in the log"))
        else:
            report.differences.extend(_compare(want, have))
    report.differences.extend(_missing(want) for want in expected.values())
    report.differences.sort(key=lambda d: d.item_id)
    fold.report.items = report.log_items
    return report


def _missing(want: StoredItem) -> Difference:
    return Difference(want.item.id, "missing",
                      f"version {want.version} in the log, not in the store")


def _compare(want: StoredItem, have: StoredItem) -> list[Difference]:
    details = []
    if want.version != have.version:
        details.append(f"version {want.version} in the log, {have.version} in the store")
    for name in ("created_at", "created_by", "properties"):
        if _json(getattr(want.item, name)) != _json(getattr(have.item, name)):
            details.append(f"other {name}")
    return [Difference(want.item.id, "different", "; ".join(details))] if details else []


def _json(value: Any) -> bytes:
    """A value as JSON, keys sorted: Python's == takes true for 1 and 1 for 1.0; JSON not."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
