"""The contract's constants, the broker names of a deployment, and JSON as the wire carries it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from thelca_client.contract.wording import json_type

DEFAULT_PREFIX: Final = "thelca"
DEFAULT_AMQP_URL: Final = "amqp://guest:guest@localhost:5672/%2F"
DEFAULT_MAX_BODY: Final = 1024 * 1024
CONTENT_TYPE: Final = "application/json"
DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to"

STATUS_HEADER: Final = "status"
AUTHORIZATION_HEADER: Final = "Authorization"
REPLAY_END_HEADER: Final = "x-replay-end"
# Headers of a dead letter (an extension, see docs/contract.md).
DEAD_REASON_HEADER: Final = "x-thelca-reason"
DEAD_USER_HEADER: Final = "x-thelca-user"
DEAD_REPLY_TO_HEADER: Final = "x-thelca-reply-to"
# On a command `thelca dead retry --as-operator` sends: the user the dead letter was
# sent by ("" when not known). Information for the event, never a right.
RETRY_OF_HEADER: Final = "x-thelca-retry-of"

CommandName = Literal[
    "create", "read", "update",
    "create_link", "read_link", "update_link", "delete_link",
    "search_items", "search_links",
]

ITEM_CREATED: Final = "Item created"
ITEM_UPDATED: Final = "Item updated"
ITEM_READ: Final = "Item read"
ACCESS_REFUSED: Final = "Access refused"
# v1.1: the original server's link and search events, in its shapes.
LINK_CREATED: Final = "Link created"
LINK_UPDATED: Final = "Link updated"
LINK_READ: Final = "Link read"
LINK_DELETED: Final = "Link deleted"
ITEM_SEARCH: Final = "Item search"
LINK_SEARCH: Final = "Link search"

# A search answers at most `limit` results: 1 to SEARCH_LIMIT_MAX, SEARCH_LIMIT if not given.
SEARCH_LIMIT: Final = 100
SEARCH_LIMIT_MAX: Final = 1000
# search_links names exactly one of these: links whose source, target, or either is the id.
LinkEnd = Literal["source", "target", "either"]
LINK_ENDS: Final[tuple[LinkEnd, ...]] = ("source", "target", "either")

# Items are plain JSON; nesting deeper than this is refused (400) because
# encoders give up on it later, where it would be a 500 instead.
MAX_JSON_DEPTH: Final = 64

JSON = dict[str, Any]


@dataclass(frozen=True)
class Names:
    """The broker objects of one deployment, all under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,200}", self.prefix):
            raise ValueError(f"invalid prefix {self.prefix!r}: use letters, digits, . _ : -")

    def owns(self, name: str | None) -> bool:
        """Whether a name is one of this deployment's broker objects (`<prefix>.` ...):
        a reply_to that names one is never answered, so that no client can have thelca
        publish into its own queues (its log, its commands, its dead letters)."""
        return name is not None and name.startswith(f"{self.prefix}.")

    @property
    def commands(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def events_log(self) -> str:
        return f"{self.prefix}.events.log"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def replay(self) -> str:
        return f"{self.prefix}.replay"

    @property
    def checkpoints(self) -> str:
        return f"{self.prefix}.checkpoints"


class ContractError(ValueError):
    """Raised when bytes on the wire do not follow the contract (a 400)."""

    status = 400


# ---------------------------------------------------------------- JSON


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8, one line: the encoding of every message and log line."""
    return orjson.dumps(value)


def loads_object(body: bytes, what: str = "body") -> JSON:
    """Decode a JSON object, turning every way JSON can fail into a ContractError."""
    try:
        value = orjson.loads(body)
    except (orjson.JSONDecodeError, RecursionError) as error:
        raise ContractError("The data is not a JSON string") from error
    if not isinstance(value, dict):
        raise ContractError(f"{what} must be a JSON object, not {json_type(value)}")
    return value


def json_depth_ok(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when value nests no deeper than limit (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(current, dict):
            stack.extend((child, depth + 1) for child in current.values())
        elif isinstance(current, list):
            stack.extend((child, depth + 1) for child in current)
    return True
