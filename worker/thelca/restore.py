"""Rebuild an item store from the event log, to its end or to a moment in time.

The log is streamed, never loaded whole, and applied in batches of one store
transaction each. Restore publishes nothing. Lines it cannot use are counted
and reported with their line numbers, never fatal: a torn last line, a line
that is not JSON, an event that contradicts the state before it.

With several workers the log is not in version order: two workers update one
item one after the other, but their events reach the logger in either order
(each publishes after its own commit, on its own connection). An update whose
`version` is ahead of the item is therefore held back until the versions
before it have been applied; one still held at the end is reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from thelca.domain.model import Item
from thelca.eventlog import LogLine, read_log
from thelca.stores.base import ItemStore, StoreTransaction
from thelca_client.contract import ITEM_CREATED, ITEM_UPDATED

BATCH = 1000  # events per transaction: measured faster than one giant transaction


@dataclass
class _Held:
    """Updates that arrived before the versions they follow, by item id and version."""

    by_item: dict[str, dict[int, tuple[int, Item]]] = field(default_factory=dict)

    def hold(self, item: Item, version: int, line: int) -> None:
        self.by_item.setdefault(item.id, {})[version] = (line, item)

    def take(self, item_id: str, version: int) -> tuple[int, Item] | None:
        waiting = self.by_item.get(item_id)
        if not waiting or version not in waiting:
            return None
        found = waiting.pop(version)
        if not waiting:
            del self.by_item[item_id]
        return found

    def leftovers(self) -> list[tuple[int, str]]:
        return sorted(
            (line, f"item {item.id} is updated to version {version} but the log never "
                   f"reached version {version - 1}")
            for waiting in self.by_item.values() for version, (line, item) in waiting.items())


@dataclass
class RestoreReport:
    lines: int = 0
    applied: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[tuple[int, str]] = field(default_factory=list)
    items: int = 0

    def summary(self) -> str:
        parts = [f"{self.lines} lines read", f"{self.applied} events applied"]
        parts += [f"{count} {kind!r} skipped" for kind, count in sorted(self.skipped.items())]
        parts.append(f"{len(self.problems)} problem lines")
        parts.append(f"{self.items} items restored")
        return ", ".join(parts)


def parse_time(text: str) -> datetime:
    """An event time as an aware datetime; ValueError when it is not ISO 8601 with an offset."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return moment


def restore(
    log_path: str | Path,
    store: ItemStore,
    *,
    until: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> RestoreReport:
    """Apply the log's item events to an (empty) store; return what happened."""
    report = RestoreReport()
    held = _Held()
    for chunk in _chunks(read_log(log_path), BATCH):
        with store.transaction() as tx:
            for line in chunk:
                _apply_line(tx, line, until, report, held)
        if progress is not None:
            progress(len(chunk))
    report.problems = sorted(report.problems + held.leftovers())
    report.items = store.count_items()
    return report


def _apply_line(
    tx: StoreTransaction, line: LogLine, until: datetime | None, report: RestoreReport,
    held: _Held,
) -> None:
    report.lines += 1
    if line.event is None:
        report.problems.append((line.number, line.problem or "unreadable"))
        return
    event = line.event
    kind = str(event.get("type"))
    if kind not in (ITEM_CREATED, ITEM_UPDATED):
        report.skipped[kind] += 1
        return
    try:
        if until is not None and parse_time(str(event.get("time"))) > until:
            report.skipped["after --until"] += 1
            return
        problem = _apply_item_event(tx, kind, event, line.number, held)
    except (KeyError, TypeError, ValueError) as error:
        problem = f"{kind} event is malformed: {error}"
    if problem:
        report.problems.append((line.number, problem))
    elif problem is None:
        report.applied += 1
        report.applied += _apply_held(tx, str(event["value"]["id"]), held)


def _apply_item_event(
    tx: StoreTransaction, kind: str, event: dict[str, Any], line: int, held: _Held
) -> str | None:
    """None when applied, "" when held back for the versions before it, else the problem."""
    value = event["value"]
    if not isinstance(value, dict):
        raise TypeError("value is not an item")
    item = Item.from_json(value)  # properties null (old server) becomes {}
    current = tx.get_item(item.id)
    logged_version = event.get("version")
    if kind == ITEM_CREATED:
        if current is not None:
            return f"item {item.id} is created twice"
        tx.add_item(item)
        return None
    reached = 0 if current is None else current.version
    if isinstance(logged_version, int) and logged_version > reached + 1:
        held.hold(item, logged_version, line)
        return ""
    if current is None:
        return f"item {item.id} is updated before it is created"
    if isinstance(logged_version, int) and logged_version != current.version + 1:
        return (f"item {item.id} is updated to version {logged_version} "
                f"but the log so far reached version {current.version}")
    tx.replace_item(item, current.version + 1)
    return None


def _apply_held(tx: StoreTransaction, item_id: str, held: _Held) -> int:
    """Apply the held updates that now follow the item's version; how many."""
    applied = 0
    while (current := tx.get_item(item_id)) is not None:
        waiting = held.take(item_id, current.version + 1)
        if waiting is None:
            return applied
        tx.replace_item(waiting[1], current.version + 1)
        applied += 1
    return applied


def _chunks(lines: Iterable[LogLine], size: int) -> Iterator[list[LogLine]]:
    chunk: list[LogLine] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
