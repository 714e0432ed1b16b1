"""The rest of what crosses the wire: the Bearer token, replies, events, replay requests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from thelca_client.contract.base import (
    AUTHORIZATION_HEADER,
    JSON,
    ContractError,
    dumps,
    loads_object,
)
from thelca_client.contract.wording import json_type, shown

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
                raise ContractError(f"{name} must be a string, not {json_type(value)}")
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
        raise ValueError(f"{shown(text)} is not an ISO 8601 time such as "
                         "2026-11-26T23:59:59+00:00") from None
    if moment.tzinfo is None:
        raise ValueError(f"{shown(text)} has no UTC offset: add +00:00 or Z")
    return moment
