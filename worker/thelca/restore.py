"""Rebuild an item store from the event log, to its end or to a moment in time.

The log is streamed, never loaded whole, and applied in batches of one store
transaction each. Restore publishes nothing. Lines it cannot use are counted
and reported with their line numbers, never fatal: a torn last line, a line
that is not JSON, an event that contradicts the state before it.
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
    for chunk in _chunks(read_log(log_path), BATCH):
        with store.transaction() as tx:
            for line in chunk:
                _apply_line(tx, line, until, report)
        if progress is not None:
            progress(len(chunk))
    report.items = store.count_items()
    return report


def _apply_line(
    tx: StoreTransaction, line: LogLine, until: datetime | None, report: RestoreReport
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
        problem = _apply_item_event(tx, kind, event)
    except (KeyError, TypeError, ValueError) as error:
        problem = f"{kind} event is malformed: {error}"
    if problem:
        report.problems.append((line.number, problem))
    else:
        report.applied += 1


def _apply_item_event(tx: StoreTransaction, kind: str, event: dict[str, Any]) -> str | None:
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
    if current is None:
        return f"item {item.id} is updated before it is created"
    if isinstance(logged_version, int) and logged_version != current.version + 1:
        return (f"item {item.id} is updated to version {logged_version} "
                f"but the log so far reached version {current.version}")
    tx.replace_item(item, current.version + 1)
    return None


def _chunks(lines: Iterable[LogLine], size: int) -> Iterator[list[LogLine]]:
    chunk: list[LogLine] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
