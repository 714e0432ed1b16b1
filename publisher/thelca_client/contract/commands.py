"""One typed shape per command, the table of them, and a command body's encode and decode."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from thelca_client.contract.base import (
    JSON,
    LINK_ENDS,
    MAX_JSON_DEPTH,
    SEARCH_LIMIT,
    CommandName,
    ContractError,
    LinkEnd,
    dumps,
    json_depth_ok,
    loads_object,
)
from thelca_client.contract.fields import (
    after_field,
    id_field,
    item_field,
    limit_field,
    link_field,
    paged,
    version_field,
    with_version,
)
from thelca_client.contract.wording import json_type, listed, shown

# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class CreateItem:
    """The create command: a new item from the object the client sent (`{}` when none)."""

    name: ClassVar[CommandName] = "create"
    item: JSON = field(default_factory=dict)

    @classmethod
    def decode(cls, data: JSON) -> CreateItem:
        return cls(item_field(data, required=False))

    def to_json(self) -> JSON:
        return {"command": self.name, "item": self.item}


@dataclass(frozen=True)
class ReadItem:
    """The read command: the item with this id."""

    name: ClassVar[CommandName] = "read"
    id: str

    @classmethod
    def decode(cls, data: JSON) -> ReadItem:
        return cls(id_field(data, cls.name))

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
        item_id = id_field(data, cls.name)
        return cls(item_id, item_field(data, required=True), version_field(data))

    def to_json(self) -> JSON:
        return with_version({"command": self.name, "id": self.id, "item": self.item},
                             self.expected_version)


@dataclass(frozen=True)
class CreateLink:
    """The create_link command: a new link from the object the client sent (`{}` when none)."""

    name: ClassVar[CommandName] = "create_link"
    link: JSON = field(default_factory=dict)

    @classmethod
    def decode(cls, data: JSON) -> CreateLink:
        return cls(link_field(data, required=False))

    def to_json(self) -> JSON:
        return {"command": self.name, "link": self.link}


@dataclass(frozen=True)
class ReadLink:
    """The read_link command: the link with this id."""

    name: ClassVar[CommandName] = "read_link"
    id: str

    @classmethod
    def decode(cls, data: JSON) -> ReadLink:
        return cls(id_field(data, cls.name, "link"))

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
        link_id = id_field(data, cls.name, "link")
        return cls(link_id, link_field(data, required=True), version_field(data))

    def to_json(self) -> JSON:
        return with_version({"command": self.name, "id": self.id, "link": self.link},
                             self.expected_version)


@dataclass(frozen=True)
class DeleteLink:
    """The delete_link command: remove the link with this id, maybe only at a known version."""

    name: ClassVar[CommandName] = "delete_link"
    id: str
    expected_version: int | None = None

    @classmethod
    def decode(cls, data: JSON) -> DeleteLink:
        return cls(id_field(data, cls.name, "link"), version_field(data))

    def to_json(self) -> JSON:
        return with_version({"command": self.name, "id": self.id}, self.expected_version)


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
            raise ContractError(f"where must be an object, not {json_type(where)}")
        if not json_depth_ok(where, MAX_JSON_DEPTH):
            raise ContractError(f"where nests deeper than {MAX_JSON_DEPTH} levels")
        return cls(where, limit_field(data), after_field(data))

    def to_json(self) -> JSON:
        return paged({"command": self.name, "where": self.where}, self.limit, self.after)


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
            raise ContractError(f"{end} must be a string, not {json_type(item_id)}")
        return cls(end, item_id, limit_field(data), after_field(data))

    def to_json(self) -> JSON:
        return paged({"command": self.name, self.end: self.item_id}, self.limit, self.after)

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
    return decode_command_object(loads_object(body))


def decode_command_object(data: JSON) -> Command:
    """Type-check a command body already decoded to a JSON object (decode_command), for a
    caller that decoded it once for other uses too; raise ContractError naming the field."""
    name = data.get("command")
    if name is None:
        raise ContractError(f"command is missing: use one of {listed(COMMANDS)}")
    kind = COMMAND_TYPES.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ContractError(f"command must be one of {listed(COMMANDS)}, not {shown(name)}")
    return kind.decode(data)


