"""The item events' rules for the fold: when an event is well formed, which version it takes.

One kind of record: another kind the log may carry gets a module like this one.
"""

from __future__ import annotations

from typing import Any

import orjson

from thelca.domain.model import Item
from thelca_client.contract import ITEM_CREATED


def well_formed(value: dict[str, Any]) -> bool:
    """True when an item event's value can be an item (a dict has been checked already)."""
    properties = value.get("properties")
    return (type(value.get("id")) is str and type(value.get("created_at")) is str
            and type(value.get("created_by")) is str
            and (properties is None or type(properties) is dict))


def next_version(kind: str, item_id: str, current: int | None, logged: Any) -> str | None:
    """Why this event cannot follow the item's current version, or None when it can."""
    if kind == ITEM_CREATED:
        if current is not None:
            return f"item {item_id} is created twice"
        version = 1
    elif current is None:
        return f"item {item_id} is updated before it is created"
    else:
        version = current + 1
    if logged is not None and logged != version:
        return (f"item {item_id} is logged at version {logged} "
                f"but the log so far makes it version {version}")
    return None


def item_of(raw: bytes) -> Item:
    """The Item of a log line the fold has checked; properties null means {}."""
    return Item.from_json(orjson.loads(raw)["value"])
