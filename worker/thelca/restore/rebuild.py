"""`restore`: rebuild an (empty) item store from the log, to its end or to a moment.

The log (its segments, then the live file) is streamed, never loaded whole,
through a fold whose writer loads the store in large batches: one bulk load
each when the store has one, else ordinary transactions, one version at a
time. The links that are left at the end are written last. Restore publishes
nothing.

The hash chain is followed along the way (`chainwatch`): a broken chain
stops the restore, unless it is accepted, and the report says where it broke.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from thelca.eventlog.reader import LogSnapshot
from thelca.restore.chainwatch import ChainWatch
from thelca.restore.fold import FLUSH_ITEMS, Fold, without_cyclic_gc
from thelca.restore.report import RestoreReport
from thelca.restore.writers import bulk_writer, transaction_writer, write_links
from thelca.stores.base import BulkItemLoader, ItemStore


def restore(
    log_path: str | Path,
    store: ItemStore,
    *,
    until: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
    flush_items: int = FLUSH_ITEMS,
    accept_broken_chain: bool = False,
) -> RestoreReport:
    """Apply the log's item and link events to an (empty) store; return what happened.

    progress, when given, is called now and then with (bytes read, bytes in all).
    Raises FileNotFoundError when there is no log, and ChainBroken when the hash
    chain is broken, unless accept_broken_chain: the store may then hold part of
    the log or all of it, so empty it. A log without a chain (an original
    server's) restores as it is.
    """
    snapshot = LogSnapshot(log_path)
    if isinstance(store, BulkItemLoader):
        fold = Fold(until=until, flush=bulk_writer(store), flush_items=flush_items,
                    track_flushed=False)
    else:
        fold = Fold(until=until, flush=transaction_writer(store), flush_items=flush_items)
    tick = None
    if progress is not None:
        tick = lambda: progress(snapshot.bytes_read, snapshot.total_bytes)  # noqa: E731
    with ChainWatch(Path(log_path), snapshot, accept_broken=accept_broken_chain) as chain, \
            without_cyclic_gc():
        fold.run(chain.blocks(snapshot), tick)
        fold.finish()
        found = chain.found()
    fold.settle_held()
    write_links(store, fold.links.links())
    report = fold.report
    report.items = store.count_items()
    report.links = store.count_links()
    report.chain_lines, report.unchained, report.chain_break_count, report.chain_breaks = found
    return report
