"""`verify`: fold the log in memory and compare it, item by item and link by link, with a
store."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from thelca.domain.model import StoredItem, StoredLink
from thelca.eventlog.reader import LogSnapshot
from thelca.restore.fold import Fold, without_cyclic_gc
from thelca.restore.report import RestoreReport
from thelca.stores.base import ItemStore


@dataclass(frozen=True)
class Difference:
    """One item (or link) on which the log and the store disagree, and how."""

    item_id: str  # the id of the item, or of the link
    kind: str  # "missing" (in the log, not the store), "extra", or "different"
    detail: str
    record: str = "item"  # or "link"

    def __str__(self) -> str:
        what = "" if self.record == "item" else f"{self.record} "
        return f"{self.kind} {what}{self.item_id}: {self.detail}"


@dataclass
class VerifyReport:
    """What verify found: the fold's report, both counts, and every difference."""

    log: RestoreReport
    log_items: int = 0
    store_items: int = 0
    differences: list[Difference] = field(default_factory=list)
    log_links: int = 0
    store_links: int = 0


def verify(
    log_path: str | Path, store: ItemStore, *, until: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Fold the log in memory and compare it, item by item and link by link, with the store.

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
    _compare_links(fold.links.links(), store, report)
    report.differences.sort(key=lambda d: (d.record, d.item_id))
    fold.report.items = report.log_items
    fold.report.links = report.log_links
    return report


def _compare_links(logged: Iterable[StoredLink], store: ItemStore, report: VerifyReport) -> None:
    expected = {stored.link.id: stored for stored in logged}
    report.log_links = len(expected)
    for have in store.links():
        report.store_links += 1
        want = expected.pop(have.link.id, None)
        if want is None:
            report.differences.append(Difference(
                have.link.id, "extra", f"version {have.version} in the store, not in the log",
                "link"))
            continue
        details = [] if want.version == have.version else [
            f"version {want.version} in the log, {have.version} in the store"]
        details += [f"other {name}" for name in ("created_at", "created_by", "source", "target",
                                                 "properties")
                    if _json(getattr(want.link, name)) != _json(getattr(have.link, name))]
        if details:
            report.differences.append(Difference(have.link.id, "different", "; ".join(details),
                                                  "link"))
    report.differences.extend(
        Difference(want.link.id, "missing", f"version {want.version} in the log, not in the "
                   "store", "link") for want in expected.values())


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
