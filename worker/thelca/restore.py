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

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from thelca.domain.model import Item, StoredItem
from thelca.eventlog import LogLine, LogSnapshot
from thelca.stores.base import BulkItemLoader, ItemStore
from thelca_client.contract import ITEM_CREATED, ITEM_UPDATED

# Changed items held in memory between two writes to the store: a few hundred
# MB at most, and few enough writes that a million-event log restores at
# close to the speed of reading it.
FLUSH_ITEMS = 500_000
PROGRESS_LINES = 20_000  # how often the progress callback hears of the bytes read
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


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with a UTC offset (or Z); ValueError otherwise."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset: add +00:00 or Z")
    return moment


class Fold:
    """The items a log describes: every item's version, and the values changed since a flush.

    `versions[id]` is the item's version so far; `changed[id]` is its latest
    value (as logged) and the version it had at the last flush (0: never
    flushed). `flush` is called with `changed` whenever it holds FLUSH_ITEMS
    items, and must write them; the fold then forgets their values.
    """

    def __init__(
        self,
        *,
        until: datetime | None = None,
        flush: Callable[[dict[str, tuple[dict[str, Any], int]], dict[str, int]], None]
        | None = None,
        flush_items: int = FLUSH_ITEMS,
    ) -> None:
        self.until = until
        self.flush = flush
        self.flush_items = flush_items
        self.versions: dict[str, int] = {}
        self.changed: dict[str, tuple[dict[str, Any], int]] = {}
        self.report = RestoreReport()

    def run(self, lines: Iterable[LogLine], progress: Callable[[], None] | None = None) -> None:
        """Apply every line; call progress every PROGRESS_LINES lines and at the end."""
        report = self.report
        versions, changed = self.versions, self.changed
        skipped = report.skipped
        until = self.until
        count = applied = 0
        for line in lines:
            count += 1
            if progress is not None and count % PROGRESS_LINES == 0:
                progress()
            event = line.event
            if event is None:
                report.problems.append(Problem(line.file, line.number, line.problem or "?"))
                continue
            kind = event.get("type")
            if kind != ITEM_CREATED and kind != ITEM_UPDATED:  # noqa: PLR1714 - hot loop
                skipped[kind if isinstance(kind, str) else "(no type)"] += 1
                continue
            try:
                if until is not None and parse_time(event["time"]) > until:
                    skipped[AFTER_UNTIL] += 1
                    continue
                why = _apply(versions, changed, kind, event)
            except (KeyError, TypeError, ValueError) as error:
                why = f"{kind} event is malformed: {error}"
            if why is None:
                applied += 1
                if len(changed) >= self.flush_items and self.flush is not None:
                    self.flush(changed, versions)
                    changed.clear()
            else:
                report.problems.append(Problem(line.file, line.number, why))
        report.lines += count
        report.applied += applied
        if progress is not None:
            progress()

    def finish(self) -> None:
        """Write what is still changed (restore); verify keeps it instead."""
        if self.changed and self.flush is not None:
            self.flush(self.changed, self.versions)
            self.changed.clear()

    def items(self) -> Iterator[StoredItem]:
        """The folded items, ordered by id (only those not flushed: verify never flushes)."""
        for item_id in sorted(self.changed):
            yield StoredItem(Item.from_json(self.changed[item_id][0]), self.versions[item_id])


def _apply(
    versions: dict[str, int],
    changed: dict[str, tuple[dict[str, Any], int]],
    kind: str,
    event: dict[str, Any],
) -> str | None:
    """Fold one item event in; the reason it cannot be, or None."""
    value = event["value"]
    if type(value) is not dict:
        raise TypeError("value is not an item")
    item_id = value["id"]
    if type(item_id) is not str or type(value["created_at"]) is not str or type(
            value["created_by"]) is not str:
        raise TypeError("id, created_at and created_by must be strings")
    properties = value.get("properties")
    if properties is not None and type(properties) is not dict:
        raise TypeError("properties is not an object")
    logged = event.get("version")
    current = versions.get(item_id)
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
    versions[item_id] = version
    previous = changed.get(item_id)
    changed[item_id] = (value, previous[1] if previous is not None else version - 1)
    return None


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
    write = _bulk_writer(store) if isinstance(store, BulkItemLoader) else _transaction_writer(
        store)
    fold = Fold(until=until, flush=write, flush_items=flush_items)
    tick = None
    if progress is not None:
        tick = lambda: progress(snapshot.bytes_read, snapshot.total_bytes)  # noqa: E731
    fold.run(snapshot.lines(), tick)
    fold.finish()
    fold.report.items = store.count_items()
    return fold.report


Writer = Callable[[dict[str, tuple[dict[str, Any], int]], dict[str, int]], None]


def _bulk_writer(store: BulkItemLoader) -> Writer:
    def write(changed: dict[str, tuple[dict[str, Any], int]], versions: dict[str, int]) -> None:
        store.load_items(StoredItem(Item.from_json(value), versions[item_id])
                         for item_id, (value, _) in changed.items())

    return write


def _transaction_writer(store: ItemStore) -> Writer:
    """Through the ordinary interface: add at version 1, then replace up to the version."""

    def write(changed: dict[str, tuple[dict[str, Any], int]], versions: dict[str, int]) -> None:
        pending = list(changed.items())
        for start in range(0, len(pending), TRANSACTION_ITEMS):
            with store.transaction() as tx:
                for item_id, (value, flushed) in pending[start:start + TRANSACTION_ITEMS]:
                    item = Item.from_json(value)
                    if flushed == 0:
                        tx.add_item(item)
                    for version in range(max(2, flushed + 1), versions[item_id] + 1):
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
    log_path: str | Path, store: ItemStore, *, until: datetime | None = None
) -> VerifyReport:
    """Fold the log in memory and compare it, item by item, with the store."""
    fold = Fold(until=until)
    fold.run(LogSnapshot(log_path).lines())
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
        if getattr(want.item, name) != getattr(have.item, name):
            details.append(f"other {name}")
    return [Difference(want.item.id, "different", "; ".join(details))] if details else []
