"""The checks an item command and a link command share, with the contract's words.

Both services refuse the server's fields on a create (400), an unknown id (404),
a changed server field on an update (400) and a stale expected_version (409);
`what` is "item" or "link", as the refusal says it.
"""

from __future__ import annotations

from typing import TypeVar

from thelca.domain.model import SERVER_FIELDS, Item, Link
from thelca.errors import Conflict, InvalidCommand, ItemNotFound
from thelca_client.contract import JSON

Stored = TypeVar("Stored")


def refuse_server_fields(proposed: JSON) -> None:
    """A create may not set what the server sets: id, created_at, created_by."""
    for name in SERVER_FIELDS:
        if proposed.get(name) is not None:
            raise InvalidCommand(f"{name} cannot be set externally")


def found(stored: Stored | None, what: str, id: str) -> Stored:
    """What the store holds under the id; ItemNotFound (404) when nothing."""
    if stored is None:
        raise ItemNotFound(f"no {what} with id {id}")
    return stored


def check_unchanged(current: Item | Link, id: str, proposed: JSON) -> None:
    """The server's fields of an update must come back as they were."""
    if proposed.get("id") != id:
        raise InvalidCommand("id cannot be modified")
    for name in ("created_at", "created_by"):
        if proposed.get(name) != getattr(current, name):
            raise InvalidCommand(f"{name} cannot be modified")


def check_version(expected_version: int | None, version: int, what: str, id: str) -> None:
    """Conflict (409) when an expected_version is given and is not the current one."""
    if expected_version is not None and expected_version != version:
        raise Conflict(
            f"expected_version is {expected_version} but {what} {id} is at version {version}"
        )
