"""Links between items: the events that record them, and the link service.

A link (thelca.domain.model.Link) relates two items: a STORY that IMPLEMENTS an
EPIC. Unlike an item, a link can be deleted, and is then gone. The service
reads authorise, validate, store, event as the item service does, with the
contract's order of checks: 400 (fields the server sets), 404, 400 (fields
that cannot change), 400 (source and target), 403, 409.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from thelca.authority.base import Authority, Principal
from thelca.domain import model
from thelca.domain.checks import check_unchanged, check_version, found, refuse_server_fields
from thelca.domain.model import Link, Origin, StoredLink
from thelca.errors import InvalidCommand
from thelca.stores.base import StoreTransaction
from thelca_client.contract import (
    JSON,
    LINK_CREATED,
    LINK_DELETED,
    LINK_READ,
    LINK_UPDATED,
    Event,
)

ENDS = ("source", "target")


# ---------------------------------------------------------------- events


def link_created(stored: StoredLink, user: str, time: str, origin: Origin) -> Event:
    return _link_event(LINK_CREATED, stored, stored.link.to_json(), user,
                       time=time, origin=origin)


def link_updated(stored: StoredLink, user: str, time: str, origin: Origin) -> Event:
    return _link_event(LINK_UPDATED, stored, stored.link.to_json(), user,
                       time=time, origin=origin)


def link_read(stored: StoredLink, user: str, time: str, origin: Origin) -> Event:
    return _link_event(LINK_READ, stored, stored.link.id, user,
                       time=time, origin=origin)


def link_deleted(stored: StoredLink, user: str, time: str, origin: Origin) -> Event:
    """The original server's shape: the value is the link's id; the version it had is extra."""
    return _link_event(LINK_DELETED, stored, stored.link.id, user,
                       time=time, origin=origin)


def _link_event(
    kind: str, stored: StoredLink, value: Any, user: str, *, time: str, origin: Origin
) -> Event:
    return Event(
        time=time,
        type=kind,
        user=user,
        value=value,
        id=model.event_id_for(origin, kind, user),
        extra={"version": stored.version, "command_id": origin.command_id},
    )


# ---------------------------------------------------------------- the service


@dataclass(frozen=True)
class LinkResult:
    """A link command's outcome: the link as stored (or as it was, when deleted), its event."""

    stored: StoredLink
    event: Event


@dataclass(frozen=True)
class LinkService:
    """Create, read, update and delete links: authorise, validate, store, event."""

    authority: Authority
    clock: Callable[[], str] = model.utc_now
    new_id: Callable[[], str] = model.new_item_id

    def create(
        self, tx: StoreTransaction, principal: Principal, proposed: JSON, origin: Origin
    ) -> LinkResult:
        refuse_server_fields(proposed)
        source, target = _checked_ends(tx, proposed)
        user = self.authority.check_create_link(principal, proposed)
        now = self.clock()
        link = Link(self.new_id(), now, user, source, target,
                    dict(proposed.get("properties") or {}))
        stored = tx.add_link(link)
        return LinkResult(stored, link_created(stored, user, now, origin))

    def read(
        self, tx: StoreTransaction, principal: Principal, link_id: str, origin: Origin
    ) -> LinkResult:
        stored = found(tx.get_link(link_id), "link", link_id)
        user = self.authority.check_read_link(principal, stored.link)
        return LinkResult(stored, link_read(stored, user, self.clock(), origin))

    def update(
        self,
        tx: StoreTransaction,
        principal: Principal,
        link_id: str,
        proposed: JSON,
        *,
        expected_version: int | None,
        origin: Origin,
    ) -> LinkResult:
        current = found(tx.get_link(link_id), "link", link_id)
        check_unchanged(current.link, link_id, proposed)
        source, target = _checked_ends(tx, proposed)
        new_link = Link(current.link.id, current.link.created_at, current.link.created_by,
                        source, target, dict(proposed.get("properties") or {}))
        user = self.authority.check_update_link(principal, current.link, new_link)
        check_version(expected_version, current.version, "link", link_id)
        stored = tx.replace_link(new_link, current.version + 1)
        return LinkResult(stored, link_updated(stored, user, self.clock(), origin))

    def delete(
        self,
        tx: StoreTransaction,
        principal: Principal,
        link_id: str,
        *,
        expected_version: int | None,
        origin: Origin,
    ) -> LinkResult:
        current = found(tx.get_link(link_id), "link", link_id)
        user = self.authority.check_delete_link(principal, current.link)
        check_version(expected_version, current.version, "link", link_id)
        tx.delete_link(link_id, current.version)
        return LinkResult(current, link_deleted(current, user, self.clock(), origin))


def _checked_ends(tx: StoreTransaction, proposed: JSON) -> tuple[str, str]:
    """The source and target a create or update asks for, in the original server's order of
    complaints: both set, different, and each the id of an item."""
    source, target = proposed.get("source"), proposed.get("target")
    if source is None or target is None:  # the decoder made sure of str or None
        raise InvalidCommand("source and target must be set")
    if source == target:
        raise InvalidCommand("source and target must be different")
    for name, item_id in zip(ENDS, (source, target), strict=True):
        if not tx.has_item(item_id):
            raise InvalidCommand(f"{name} must be a valid item id")
    return source, target
