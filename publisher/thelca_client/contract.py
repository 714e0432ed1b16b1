"""The wire contract: broker names, message shapes, encode and decode.

Everything a client needs to speak to thelca, with no server dependency.
The prose version is docs/contract.md; every rule there that concerns the
bytes on the wire lives here, so that the worker and the client cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Final, Literal

import orjson

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
        raise ContractError(f"{what} must be a JSON object, not {_json_type(value)}")
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


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class CreateItem:
    """The create command: a new item from the object the client sent (`{}` when none)."""

    name: ClassVar[CommandName] = "create"
    item: JSON = field(default_factory=dict)

    @classmethod
    def decode(cls, data: JSON) -> CreateItem:
        return cls(_item_field(data, required=False))

    def to_json(self) -> JSON:
        return {"command": self.name, "item": self.item}


@dataclass(frozen=True)
class ReadItem:
    """The read command: the item with this id."""

    name: ClassVar[CommandName] = "read"
    id: str

    @classmethod
    def decode(cls, data: JSON) -> ReadItem:
        return cls(_id_field(data, cls.name))

    def to_json(self) -> JSON:
        return {"command": self.name, "id": self.id}


@dataclass(frozen=True)
class UpdateItem:
    """The update command: the whole item as the client wants it, maybe at a known version."""

    name: ClassVar[CommandName] = "update"
    id: str
    item: JSON
    expected_version: int | None = None

    @classmethod
    def decode(cls, data: JSON) -> UpdateItem:
        item_id = _id_field(data, cls.name)
        return cls(item_id, _item_field(data, required=True), _expected_version(data))

    def to_json(self) -> JSON:
        return _with_version({"command": self.name, "id": self.id, "item": self.item},
                             self.expected_version)


@dataclass(frozen=True)
class CreateLink:
    """The create_link command: a new link from the object the client sent (`{}` when none)."""

    name: ClassVar[CommandName] = "create_link"
    link: JSON = field(default_factory=dict)

    @classmethod
    def decode(cls, data: JSON) -> CreateLink:
        return cls(_link_field(data, required=False))

    def to_json(self) -> JSON:
        return {"command": self.name, "link": self.link}


@dataclass(frozen=True)
class ReadLink:
    """The read_link command: the link with this id."""

    name: ClassVar[CommandName] = "read_link"
    id: str

    @classmethod
    def decode(cls, data: JSON) -> ReadLink:
        return cls(_id_field(data, cls.name, "link"))

    def to_json(self) -> JSON:
        return {"command": self.name, "id": self.id}


@dataclass(frozen=True)
class UpdateLink:
    """The update_link command: the whole link as the client wants it, maybe at a known version."""

    name: ClassVar[CommandName] = "update_link"
    id: str
    link: JSON
    expected_version: int | None = None

    @classmethod
    def decode(cls, data: JSON) -> UpdateLink:
        link_id = _id_field(data, cls.name, "link")
        return cls(link_id, _link_field(data, required=True), _expected_version(data))

    def to_json(self) -> JSON:
        return _with_version({"command": self.name, "id": self.id, "link": self.link},
                             self.expected_version)


@dataclass(frozen=True)
class DeleteLink:
    """The delete_link command: remove the link with this id, maybe only at a known version."""

    name: ClassVar[CommandName] = "delete_link"
    id: str
    expected_version: int | None = None

    @classmethod
    def decode(cls, data: JSON) -> DeleteLink:
        return cls(_id_field(data, cls.name, "link"), _expected_version(data))

    def to_json(self) -> JSON:
        return _with_version({"command": self.name, "id": self.id}, self.expected_version)


@dataclass(frozen=True)
class SearchItems:
    """The search_items command: the items whose properties hold every key of `where`,
    each with an equal JSON value, in creation order, a page at a time."""

    name: ClassVar[CommandName] = "search_items"
    where: JSON = field(default_factory=dict)
    limit: int = SEARCH_LIMIT
    after: str | None = None

    @classmethod
    def decode(cls, data: JSON) -> SearchItems:
        where = data.get("where")
        if where is None:
            where = {}
        elif not isinstance(where, dict):
            raise ContractError(f"where must be an object, not {_json_type(where)}")
        if not json_depth_ok(where, MAX_JSON_DEPTH):
            raise ContractError(f"where nests deeper than {MAX_JSON_DEPTH} levels")
        return cls(where, _limit(data), _after(data))

    def to_json(self) -> JSON:
        return _paged({"command": self.name, "where": self.where}, self.limit, self.after)


@dataclass(frozen=True)
class SearchLinks:
    """The search_links command: the links whose source, target, or either end is an item,
    in creation order, a page at a time."""

    name: ClassVar[CommandName] = "search_links"
    end: LinkEnd
    item_id: str
    limit: int = SEARCH_LIMIT
    after: str | None = None

    @classmethod
    def decode(cls, data: JSON) -> SearchLinks:
        given = [end for end in LINK_ENDS if data.get(end) is not None]
        if len(given) != 1:
            raise ContractError("search_links needs exactly one of source, target, either "
                                f"(an item id), not {len(given)}")
        end = given[0]
        item_id = data[end]
        if not isinstance(item_id, str):
            raise ContractError(f"{end} must be a string, not {_json_type(item_id)}")
        return cls(end, item_id, _limit(data), _after(data))

    def to_json(self) -> JSON:
        return _paged({"command": self.name, self.end: self.item_id}, self.limit, self.after)

    @property
    def query(self) -> JSON:
        """The query as the command named it: `{"source": id}` and the like."""
        return {self.end: self.item_id}


# A decoded command body: one shape per command. A new command is a shape here, its
# name in CommandName, an entry in COMMAND_TYPES, and a handler in the worker's table
# (thelca.roles.handlers).
Command = (CreateItem | ReadItem | UpdateItem | CreateLink | ReadLink | UpdateLink
           | DeleteLink | SearchItems | SearchLinks)

COMMAND_TYPES: Final[dict[str, type[Command]]] = {
    kind.name: kind
    for kind in (CreateItem, ReadItem, UpdateItem, CreateLink, ReadLink, UpdateLink,
                 DeleteLink, SearchItems, SearchLinks)
}
COMMANDS: Final = tuple(COMMAND_TYPES)  # the command names, in the contract's order


def encode_command(
    name: CommandName,
    *,
    id: str | None = None,
    item: Mapping[str, Any] | None = None,
    expected_version: int | None = None,
) -> bytes:
    body: JSON = {"command": name}
    if id is not None:
        body["id"] = id
    if item is not None:
        body["item"] = dict(item)
    if expected_version is not None:
        body["expected_version"] = expected_version
    return dumps(body)


def encode(command: Command) -> bytes:
    """The body of a command, as a client sends it."""
    return dumps(command.to_json())


def decode_command(body: bytes) -> Command:
    """Decode and type-check a command body; raise ContractError naming the field."""
    data = loads_object(body)
    name = data.get("command")
    if name is None:
        raise ContractError(f"command is missing: use one of {_listed(COMMANDS)}")
    kind = COMMAND_TYPES.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ContractError(f"command must be one of {_listed(COMMANDS)}, not {_shown(name)}")
    return kind.decode(data)


def _id_field(data: JSON, command: str, what: str = "item") -> str:
    item_id = data.get("id")
    if item_id is None:
        raise ContractError(f"id is missing: {command} needs the {what}'s id")
    if not isinstance(item_id, str):
        raise ContractError(f"id must be a string, not {_json_type(item_id)}")
    return item_id


def _item_field(data: JSON, *, required: bool) -> JSON:
    item = data.get("item")
    if item is None:
        if required:
            raise ContractError("item is missing: update needs the whole item")
        return {}
    if not isinstance(item, dict):
        raise ContractError(f"item must be an object, not {_json_type(item)}")
    properties = item.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise ContractError(f"item.properties must be an object, not {_json_type(properties)}")
    if not json_depth_ok(properties, MAX_JSON_DEPTH):
        raise ContractError(f"item.properties nests deeper than {MAX_JSON_DEPTH} levels")
    for key in ("id", "created_at", "created_by"):
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            raise ContractError(f"item.{key} must be a string, not {_json_type(value)}")
    return item


def _link_field(data: JSON, *, required: bool) -> JSON:
    link = data.get("link")
    if link is None:
        if required:
            raise ContractError("link is missing: update_link needs the whole link")
        return {}
    if not isinstance(link, dict):
        raise ContractError(f"link must be an object, not {_json_type(link)}")
    properties = link.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise ContractError(f"link.properties must be an object, not {_json_type(properties)}")
    if not json_depth_ok(properties, MAX_JSON_DEPTH):
        raise ContractError(f"link.properties nests deeper than {MAX_JSON_DEPTH} levels")
    for key in ("id", "created_at", "created_by", "source", "target"):
        value = link.get(key)
        if value is not None and not isinstance(value, str):
            raise ContractError(f"link.{key} must be a string, not {_json_type(value)}")
    return link


def _expected_version(data: JSON) -> int | None:
    version = data.get("expected_version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise ContractError(f"expected_version must be an integer, not {_json_type(version)}")
    return version


def _limit(data: JSON) -> int:
    limit = data.get("limit")
    if limit is None:
        return SEARCH_LIMIT
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise ContractError(f"limit must be an integer, not {_json_type(limit)}")
    if not 1 <= limit <= SEARCH_LIMIT_MAX:
        raise ContractError(f"limit must be from 1 to {SEARCH_LIMIT_MAX}, not {limit}")
    return limit


def _after(data: JSON) -> str | None:
    after = data.get("after")
    if after is not None and not isinstance(after, str):
        raise ContractError(f"after must be a string (an id), not {_json_type(after)}")
    return after


def _with_version(body: JSON, expected_version: int | None) -> JSON:
    if expected_version is not None:
        body["expected_version"] = expected_version
    return body


def _paged(body: JSON, limit: int, after: str | None) -> JSON:
    body["limit"] = limit
    if after is not None:
        body["after"] = after
    return body


def _listed(names: Iterable[str]) -> str:
    return ", ".join(names)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- authorization


def bearer_token(headers: Mapping[str, Any] | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, matched case-insensitively.

    Raises ContractError with status 401; the message never contains the token.
    """
    values = [v for k, v in (headers or {}).items() if k.lower() == "authorization"]
    if not values:
        raise Unauthenticated("no Authorization header")
    if len(values) > 1:
        raise Unauthenticated("more than one Authorization header")
    value = values[0]
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise Unauthenticated("the Authorization header is not UTF-8") from None
    if not isinstance(value, str):
        raise Unauthenticated("the Authorization header is not a string")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("the Authorization header must use the Bearer scheme")
    token = token.strip()
    if not token:
        raise Unauthenticated("the Bearer token is empty")
    return token


def authorization_headers(token: str) -> dict[str, str]:
    return {AUTHORIZATION_HEADER: f"Bearer {token}"}


class Unauthenticated(ContractError):
    """Raised when a message carries no usable Bearer token (a 401)."""

    status = 401


# ---------------------------------------------------------------- replies


@dataclass(frozen=True)
class Reply:
    """A reply to a command: its status, and the item and version or the error."""

    status: int
    item: JSON | None = None
    version: int | None = None
    error: str | None = None
    extra: JSON = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200

    def to_json(self) -> JSON:
        body: JSON = {"status": self.status}
        if self.item is not None:
            body["item"] = self.item
        if self.version is not None:
            body["version"] = self.version
        if self.error is not None:
            body["error"] = self.error
        body.update(self.extra)
        return body


def encode_reply(reply: Reply) -> bytes:
    return dumps(reply.to_json())


def decode_reply(body: bytes) -> Reply:
    data = loads_object(body, "reply")
    status = data.pop("status", None)
    if not isinstance(status, int) or isinstance(status, bool):
        raise ContractError("reply has no integer status")
    item = data.pop("item", None)
    version = data.pop("version", None)
    error = data.pop("error", None)
    return Reply(status, item=item, version=version, error=error, extra=data)


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """One audit event: what happened, to what, by whom, when."""

    time: str
    type: str
    user: str | None
    value: Any
    id: str
    extra: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        body: JSON = {
            "time": self.time,
            "type": self.type,
            "user": self.user,
            "value": self.value,
            "id": self.id,
        }
        body.update(self.extra)
        return body


def encode_event(event: Event) -> bytes:
    return dumps(event.to_json())


def decode_event(data: JSON) -> Event:
    """An event from a decoded log line or message; tolerant of the old server's lines."""
    known = ("time", "type", "user", "value", "id")
    extra = {k: v for k, v in data.items() if k not in known}
    return Event(
        time=str(data.get("time", "")),
        type=str(data.get("type", "")),
        user=data.get("user"),
        value=data.get("value"),
        id=str(data.get("id") or ""),
        extra=extra,
    )


# ---------------------------------------------------------------- replay


REPLAY_FIELDS: Final = ("since", "until", "types")


@dataclass(frozen=True)
class ReplayRequest:
    """A decoded replay request: inclusive bounds on the event time, and the types wanted."""

    since: str | None = None
    until: str | None = None
    types: tuple[str, ...] | None = None

    @property
    def since_time(self) -> datetime | None:
        return None if self.since is None else parse_time(self.since)

    @property
    def until_time(self) -> datetime | None:
        return None if self.until is None else parse_time(self.until)


def encode_replay_request(
    since: str | None = None, until: str | None = None, types: Iterable[str] | None = None
) -> bytes:
    body: JSON = {}
    if since is not None:
        body["since"] = since
    if until is not None:
        body["until"] = until
    if types is not None:
        body["types"] = list(types)
    return dumps(body)


def decode_replay_request(body: bytes) -> ReplayRequest:
    """Decode and check a replay request; raise ContractError (400) naming the field."""
    data = loads_object(body, "a replay request")
    unknown = sorted(set(data) - set(REPLAY_FIELDS))
    if unknown:
        raise ContractError(f"unknown field {unknown[0]!r} in the replay request: use "
                            "since, until, types")
    bounds: dict[str, str | None] = {}
    for name in ("since", "until"):
        value = data.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise ContractError(f"{name} must be a string, not {_json_type(value)}")
            try:
                parse_time(value)
            except ValueError as error:
                raise ContractError(f"{name}: {error}") from None
        bounds[name] = value
    types = data.get("types")
    if types is not None and (not isinstance(types, list)
                              or not all(isinstance(t, str) for t in types)):
        raise ContractError("types must be a list of strings, such as [\"Item created\"]")
    request = ReplayRequest(bounds["since"], bounds["until"],
                            None if types is None else tuple(types))
    since, until = request.since_time, request.until_time
    if since is not None and until is not None and since > until:
        raise ContractError("since is after until: no event could match")
    return request


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with a UTC offset (or Z); ValueError otherwise."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{_shown(text)} is not an ISO 8601 time such as "
                         "2026-11-26T23:59:59+00:00") from None
    if moment.tzinfo is None:
        raise ValueError(f"{_shown(text)} has no UTC offset: add +00:00 or Z")
    return moment
