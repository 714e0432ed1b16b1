"""The item model and the events that make the audit trail.

An item is exactly the contract's four fields; its version lives beside it in
the store, never inside it, so that items read, stored and logged are equal.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from thelca_client.contract import (
    ACCESS_REFUSED,
    ITEM_CREATED,
    ITEM_READ,
    ITEM_UPDATED,
    JSON,
    Event,
)

# Event ids are derived from the seed of the delivery that caused them (its
# Origin), the event's type and its user. The seed is the same only for a
# redelivery of the same message (the command role makes it: thelca.roles.
# fingerprints), so a redelivered command produces an event with the same id and
# the logger drops the copy, while a reused message_id with another body or
# token gets events of its own; and a 401 and a later successful attempt of one
# message (refusals before authentication are not remembered) do not collide.
EVENT_NAMESPACE = uuid.UUID("6f1c2a52-8f0e-4c55-9a57-2a8f4c1f7d10")
SERVER_FIELDS = ("id", "created_at", "created_by")


@dataclass(frozen=True)
class Item:
    id: str
    created_at: str
    created_by: str
    properties: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "properties": self.properties,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Item:
        """An item from its JSON form; properties null (the original server's) means {}."""
        return cls(
            id=str(data["id"]),
            created_at=str(data["created_at"]),
            created_by=str(data["created_by"]),
            properties=dict(data.get("properties") or {}),
        )


@dataclass(frozen=True)
class StoredItem:
    item: Item
    version: int


@dataclass(frozen=True)
class Link:
    """A link as the contract shows it: who made it when, its two items, its properties."""

    id: str
    created_at: str
    created_by: str
    source: str
    target: str
    properties: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "source": self.source,
            "target": self.target,
            "properties": self.properties,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Link:
        """A link from its JSON form, also as an early original server logged it: source and
        target inside properties (kept there too, as logged); properties null means {}."""
        properties = dict(data.get("properties") or {})
        return cls(
            id=str(data["id"]),
            created_at=str(data["created_at"]),
            created_by=str(data["created_by"]),
            source=str(data.get("source") or properties.get("source")),
            target=str(data.get("target") or properties.get("target")),
            properties=properties,
        )


@dataclass(frozen=True)
class StoredLink:
    """A link and its version in the store (1 after create, +1 per update)."""

    link: Link
    version: int


@dataclass(frozen=True)
class Origin:
    """The delivery an event comes from: the command's id, as the log's `command_id` shows
    it, and the seed its events' ids derive from (opaque here)."""

    command_id: str
    id_seed: str


def utc_now() -> str:
    """ISO 8601 UTC with microseconds and +00:00, as the contract writes times."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_item_id() -> str:
    return str(uuid.uuid4())


def event_id_for(origin: Origin, kind: str, user: str | None) -> str:
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{origin.id_seed}\x1f{kind}\x1f{user or ''}"))


def item_created(stored: StoredItem, user: str, time: str, origin: Origin) -> Event:
    return _item_event(ITEM_CREATED, stored, user, time, origin)


def item_updated(stored: StoredItem, user: str, time: str, origin: Origin) -> Event:
    return _item_event(ITEM_UPDATED, stored, user, time, origin)


def item_read(stored: StoredItem, user: str, time: str, origin: Origin) -> Event:
    return Event(
        time=time,
        type=ITEM_READ,
        user=user,
        value=stored.item.id,
        id=event_id_for(origin, ITEM_READ, user),
        extra={"version": stored.version, "command_id": origin.command_id},
    )


def access_refused(
    command: str | None, item_id: str | None, status: int, *, user: str | None, time: str,
    origin: Origin,
) -> Event:
    value: JSON = {}
    if command is not None:
        value["command"] = command
    if item_id is not None:
        value["id"] = item_id
    value["status"] = status
    return Event(
        time=time,
        type=ACCESS_REFUSED,
        user=user,
        value=value,
        id=event_id_for(origin, ACCESS_REFUSED, user),
        extra={"command_id": origin.command_id},
    )


def _item_event(kind: str, stored: StoredItem, user: str, time: str, origin: Origin) -> Event:
    return Event(
        time=time,
        type=kind,
        user=user,
        value=stored.item.to_json(),
        id=event_id_for(origin, kind, user),
        extra={"version": stored.version, "command_id": origin.command_id},
    )
