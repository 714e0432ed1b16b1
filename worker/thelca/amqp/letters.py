"""What a dead letter is, as far as can be told from what a client cannot forge.

Anyone who may publish to the default exchange may also publish straight into
the dead queue, or make the broker dead-letter a command of their choosing
(an expiration behind a backlog), with any headers. So each letter says how
it came (the exchange it was published to, the broker-checked `user_id`,
`x-death`) and, from that, who sent it and how sure that is. Every value is
shown escaped: a letter may hold bytes that are not UTF-8 and headers of any
type. A DeadLetter never holds the token: it only says whether the message
carries one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import pika.spec

from thelca_client.contract import DEAD_REASON_HEADER, DEAD_REPLY_TO_HEADER, DEAD_USER_HEADER, Names

DeadBy = Literal["worker", "logger", "broker", "unknown", "nobody"]
# How sure the sender of a letter is, most sure first.
Known = Literal["certain", "likely", "token", "claimed", "unknown"]
KNOWN_SENDERS: tuple[Known, ...] = ("certain", "likely")
# Raised by every listing (the messages go back to the queue): not shown, so that two
# listings of the same queue are the same.
LISTING_COUNTS = ("x-delivery-count", "x-acquired-count")
LONGEST_INT = 2**63  # what JSON readers take as an exact integer, roughly


@dataclass(frozen=True)
class Death:
    """Why the broker dead-lettered a message (one x-death entry)."""

    reason: str
    queue: str | None
    count: int | None


@dataclass(frozen=True)
class Sender:
    """Who sent a dead letter, as far as can be told, and how sure that is (and why)."""

    user: str | None
    known: Known
    why: str

    @property
    def known_user(self) -> str | None:
        """The user, when known for certain (or as good as): never a mere claim."""
        return self.user if self.known in KNOWN_SENDERS else None


@dataclass(frozen=True)
class DeadLetter:
    """A message of the dead queue as an operator may see it: never its token.

    Every text is shown escaped (bytes that are not UTF-8 as \\xNN); `headers`
    holds every header but the token and the delivery counts, as JSON values.
    """

    position: int
    message_id: str | None
    correlation_id: str | None
    reply_to: str | None
    exchange: str
    user_id: str | None
    by: DeadBy
    reason: str | None
    user: str | None  # x-thelca-user as written, whoever wrote it
    sender: Sender
    deaths: tuple[Death, ...]
    has_token: bool
    is_command: bool
    headers: dict[str, Any]
    body: bytes



def letter_of(
    position: int,
    names: Names,
    method: pika.spec.Basic.GetOk,
    properties: pika.spec.BasicProperties,
    body: bytes,
    *,
    worker_user: str | None,
) -> DeadLetter:
    headers = dict(properties.headers or {})
    exchange = _text(method.exchange) or ""
    user_id = _text(properties.user_id)
    deaths = _deaths(headers)
    claimed_reason = _text(headers.get(DEAD_REASON_HEADER))
    by = _dead_by(names, exchange, claimed_reason, deaths, user_id=user_id,
                  worker_user=worker_user)
    has_token = any(is_authorization(k) for k in headers)
    user = _text(headers.get(DEAD_USER_HEADER))
    reply_to = _text(headers.get(DEAD_REPLY_TO_HEADER)) if by == "worker" else None
    return DeadLetter(
        position=position,
        message_id=_text(properties.message_id),
        correlation_id=_text(properties.correlation_id),
        reply_to=reply_to or _text(properties.reply_to),
        exchange=exchange,
        user_id=user_id,
        by=by,
        reason=claimed_reason if by in ("worker", "logger") else None,
        user=user,
        sender=_sender(by, user, has_token=has_token, user_id=user_id, names=names,
                       worker_user=worker_user),
        deaths=deaths,
        has_token=has_token,
        is_command=by == "worker" or (by == "broker" and deaths[0].queue == names.commands),
        headers={_text(k) or "": _plain(v) for k, v in headers.items()
                 if not is_authorization(k) and k not in LISTING_COUNTS},
        body=body,
    )


def _dead_by(
    names: Names, exchange: str, reason: str | None, deaths: tuple[Death, ...], *,
    user_id: str | None, worker_user: str | None,
) -> DeadBy:
    """Who put the letter in the dead queue, from what a client cannot forge.

    The exchange: the default exchange ('') means it was published straight into
    the queue. x-death: only the broker's dead-lettering adds an entry (the
    newest first). The user_id: the broker checked it against the publisher's login.
    """
    if exchange != names.dead:
        return "nobody"
    if deaths:
        return "broker"
    if reason is None:
        return "unknown"
    if reason.startswith("logger:"):
        return "logger"
    if worker_user is not None and user_id != worker_user:
        return "unknown"  # thelca's headers, written by someone who is not the worker
    return "worker"


def _sender(
    by: DeadBy, user: str | None, *, has_token: bool, user_id: str | None, names: Names,
    worker_user: str | None,
) -> Sender:
    if by == "worker":
        if user is None:
            return Sender(None, "unknown", "the worker could not tell who sent it (no valid "
                          "token)")
        if worker_user is not None:
            return Sender(user, "certain", f"dead-lettered by the worker: user_id {user_id} "
                          "checked by the broker")
        return Sender(user, "likely", f"came through {names.dead} without x-death: from a "
                      "broker user that may write there, the worker with the README's users "
                      "(give --worker-user to check its user_id)")
    if has_token:
        return Sender(None, "token", "its own token says, checked by the worker when it runs")
    how = {
        "nobody": "published straight into the dead queue, not dead-lettered",
        "broker": "dead-lettered by the broker (x-death): the worker never saw it",
        "logger": "not a command",
        "unknown": f"thelca headers, but not from the worker (user_id {user_id or 'none'})",
    }[by]
    if user is not None:
        return Sender(user, "claimed", f"x-thelca-user could be written by anyone: {how}")
    return Sender(None, "unknown", how)


def _deaths(headers: dict[Any, Any]) -> tuple[Death, ...]:
    """x-death, most recent first; failing that, x-first-death-reason and -queue."""
    entries = headers.get("x-death")
    if isinstance(entries, list) and entries:
        deaths = tuple(
            Death(_text(e.get("reason")) or "unknown", _text(e.get("queue")), _int(e.get("count")))
            for e in entries if isinstance(e, dict)
        )
        if deaths:
            return deaths
    reason = _text(headers.get("x-first-death-reason"))
    if reason is None:
        return ()
    return (Death(reason, _text(headers.get("x-first-death-queue")), None),)


def _text(value: Any) -> str | None:
    """A property or header as text; bytes that are not UTF-8 escaped (\\xff)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def _plain(value: Any) -> Any:
    """A header value as a JSON value: texts escaped, other types as text."""
    if value is None or isinstance(value, bool | float | str):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, int):
        return value if -LONGEST_INT <= value < LONGEST_INT else str(value)
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_text(k) or "": _plain(v) for k, v in value.items()}
    return str(value)  # Decimal, or whatever else pika may give


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def is_authorization(header: object) -> bool:
    return isinstance(header, str) and header.lower() == "authorization"
