"""What the command role knows of the outbox between batches: which published events
it holds, and which of those the broker has confirmed and may now leave it."""

from __future__ import annotations

from collections.abc import Iterable

# Confirmed events leave the outbox this many at a time at the least (or at the tidy, once
# traffic stops): one command at a time, removing each in the next command's transaction
# cost a statement, a round trip on PostgreSQL, per command. Until removed, an event is
# only published again after a crash, and the logger drops what it wrote already.
OUTBOX_REMOVAL = 100


class OutboxBook:
    """The ids of events the outbox holds, and of those confirmed and not yet removed."""

    def __init__(self) -> None:
        self._held: set[str] = set()  # published events that the outbox holds
        self._confirmed: list[str] = []  # confirmed, to be removed by a later transaction

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._held

    def hold(self, event_ids: Iterable[str]) -> None:
        """These events are in the outbox (committed, or found there at start)."""
        self._held.update(event_ids)

    def confirm(self, event_id: str) -> None:
        """The broker confirmed this event: a later transaction removes it."""
        if event_id in self._held:
            self._held.discard(event_id)
            self._confirmed.append(event_id)

    def was_confirmed(self, event_id: str) -> bool:
        """Confirmed, though still in the outbox until a later transaction removes it."""
        return event_id in self._confirmed

    @property
    def has_confirmed(self) -> bool:
        return bool(self._confirmed)

    def take_confirmed(self, batch_size: int) -> list[str]:
        """The confirmed events this batch's transaction removes: all of them once there are
        OUTBOX_REMOVAL, or for the tidy (an empty batch), else none."""
        if batch_size and len(self._confirmed) < OUTBOX_REMOVAL:
            return []
        confirmed, self._confirmed = self._confirmed, []
        return confirmed

    def give_back(self, event_ids: list[str]) -> None:
        """The transaction that was to remove these failed: a later one will."""
        self._confirmed = event_ids + self._confirmed
