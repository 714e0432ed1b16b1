"""How a command body's fields are read and checked: each rule names the field it refuses."""

from __future__ import annotations

from thelca_client.contract.base import (
    JSON,
    MAX_JSON_DEPTH,
    SEARCH_LIMIT,
    SEARCH_LIMIT_MAX,
    ContractError,
    json_depth_ok,
)
from thelca_client.contract.wording import json_type


def id_field(data: JSON, command: str, what: str = "item") -> str:
    item_id = data.get("id")
    if item_id is None:
        raise ContractError(f"id is missing: {command} needs the {what}'s id")
    if not isinstance(item_id, str):
        raise ContractError(f"id must be a string, not {json_type(item_id)}")
    return item_id


def item_field(data: JSON, *, required: bool) -> JSON:
    item = data.get("item")
    if item is None:
        if required:
            raise ContractError("item is missing: update needs the whole item")
        return {}
    if not isinstance(item, dict):
        raise ContractError(f"item must be an object, not {json_type(item)}")
    properties = item.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise ContractError(f"item.properties must be an object, not {json_type(properties)}")
    if not json_depth_ok(properties, MAX_JSON_DEPTH):
        raise ContractError(f"item.properties nests deeper than {MAX_JSON_DEPTH} levels")
    for key in ("id", "created_at", "created_by"):
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            raise ContractError(f"item.{key} must be a string, not {json_type(value)}")
    return item


def link_field(data: JSON, *, required: bool) -> JSON:
    link = data.get("link")
    if link is None:
        if required:
            raise ContractError("link is missing: update_link needs the whole link")
        return {}
    if not isinstance(link, dict):
        raise ContractError(f"link must be an object, not {json_type(link)}")
    properties = link.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise ContractError(f"link.properties must be an object, not {json_type(properties)}")
    if not json_depth_ok(properties, MAX_JSON_DEPTH):
        raise ContractError(f"link.properties nests deeper than {MAX_JSON_DEPTH} levels")
    for key in ("id", "created_at", "created_by", "source", "target"):
        value = link.get(key)
        if value is not None and not isinstance(value, str):
            raise ContractError(f"link.{key} must be a string, not {json_type(value)}")
    return link


def version_field(data: JSON) -> int | None:
    version = data.get("expected_version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise ContractError(f"expected_version must be an integer, not {json_type(version)}")
    return version


def limit_field(data: JSON) -> int:
    limit = data.get("limit")
    if limit is None:
        return SEARCH_LIMIT
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise ContractError(f"limit must be an integer, not {json_type(limit)}")
    if not 1 <= limit <= SEARCH_LIMIT_MAX:
        raise ContractError(f"limit must be from 1 to {SEARCH_LIMIT_MAX}, not {limit}")
    return limit


def after_field(data: JSON) -> str | None:
    after = data.get("after")
    if after is not None and not isinstance(after, str):
        raise ContractError(f"after must be a string (an id), not {json_type(after)}")
    return after


def with_version(body: JSON, expected_version: int | None) -> JSON:
    if expected_version is not None:
        body["expected_version"] = expected_version
    return body


def paged(body: JSON, limit: int, after: str | None) -> JSON:
    body["limit"] = limit
    if after is not None:
        body["after"] = after
    return body



