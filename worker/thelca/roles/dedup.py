"""The deduplication window: how long a processed command's record answers its message_id.

A record made more than `seconds` ago has expired: a command re-sent under its
message_id is then a new command, as if it had never been seen (the role
forgets the record first, so that the new one can be kept). Expired records
are pruned inside the batches' own transactions, never on a timer of their
own: at most PRUNE_ROWS a batch (or the batch's size, if larger, so that
pruning always outruns recording), oldest first, from an index; and once a
prune finds fewer than it may take, not again for PRUNE_EVERY seconds. So a
batch is never held back by more than one bounded prune, and the records in
the store stay near rate x window.

Event ids derive from a seed that also holds the window's period (the clock
divided by the window): a command sent again after its record expired must
not repeat its first run's event ids, which the logger would drop as a
redelivery's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from thelca import metrics
from thelca.stores.base import DEFAULT_DEDUP_WINDOW, ProcessedCommand, StoreTransaction

PRUNE_ROWS = 500  # records pruned in one transaction, at most (unless the batch is larger)
PRUNE_EVERY = 1.0  # seconds between prunes once no expired record was left


class DedupWindow:
    """The window of one worker: its length, its clock, and when to prune next."""

    def __init__(self, seconds: float = DEFAULT_DEDUP_WINDOW,
                 clock: Callable[[], float] = time.time) -> None:
        self.seconds = seconds
        self.clock = clock
        self._prune_due = 0.0  # clock time of the next prune
        metrics.DEDUP_WINDOW.set(seconds)

    def seed(self, id_seed: str, now: float) -> str:
        """A delivery's seed of event ids, in the period of the window that `now` is in."""
        return f"{id_seed}/{int(now // self.seconds)}"

    def forgot_expired(self, tx: StoreTransaction, record: ProcessedCommand,
                       now: float) -> bool:
        """Whether the record has expired; if so it is removed, to be made anew."""
        cutoff = now - self.seconds
        if record.created_at >= cutoff:
            return False
        tx.forget_processed(record.message_id, before=cutoff)
        return True

    def prune_due(self) -> bool:
        return self.clock() >= self._prune_due

    def prune(self, tx: StoreTransaction, batch_size: int) -> int:
        """Remove expired records in a batch's transaction, when due; how many."""
        now = self.clock()
        if now < self._prune_due:
            return 0
        limit = max(PRUNE_ROWS, batch_size)
        pruned = tx.prune_processed(before=now - self.seconds, limit=limit)
        # More may wait when the limit was reached: the next batch prunes again.
        self._prune_due = now if pruned >= limit else now + PRUNE_EVERY
        return pruned

    @staticmethod
    def count(pruned: int) -> None:
        """Count pruned records once their transaction has committed."""
        if pruned:
            metrics.PROCESSED_PRUNED.inc(pruned)
