"""`verify`: fold the log in memory and compare it, item by item, with a store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from thelca.domain.model import StoredItem
from thelca.eventlog.reader import LogSnapshot
from thelca.restore.fold import Fold, without_cyclic_gc
from thelca.restore.report import RestoreReport
from thelca.stores.base import ItemStore


@dataclass(frozen=True)
class Difference:
    """One item on which the log and the store disagree, and how."""

    item_id: str
    kind: str  # "missing" (in the log, not the store), "extra", or "different"
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.item_id}: {self.detail}"


@dataclass
class VerifyReport:
    """What verify found: the fold's report, both counts, and every difference."""

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
        def tick() -> None:
            progress(snapshot.bytes_read, snapshot.total_bytes)
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
