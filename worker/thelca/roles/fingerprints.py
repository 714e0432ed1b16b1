"""What makes two deliveries "the same message", for event ids and for idempotency.

The contract (docs/contract.md, "Every action leaves its line"): an event's
id is the same only for a redelivery of the same message, that is the same
message_id, the same token, and a body that decodes to the same JSON value
(key order and spacing do not matter). So:

- `fingerprint(body)`: the SHA-256 of the body's canonical form (the decoded
  value encoded again with sorted keys; a body that is not JSON: its bytes).
  It is also kept with each remembered command, so that a different command
  re-sent under its message_id is told apart (409) from a redelivery.
- `id_seed(key, message_id, fingerprint, headers)`: what the events of one
  delivery derive their ids from (thelca.domain.model.Origin). The token
  enters it only through HMAC-SHA256 under the deployment's key (kept in the
  store, shared by every worker), so an event id lets no reader of the log
  test guesses of a token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final

import orjson

from thelca.roles.messages import Incoming

_JSON = b"json\x00"  # the canonical form of a JSON value
_RAW = b"raw\x00"  # the bytes of a body that is not JSON (or too deep to encode again)


class _Marker:
    """A value no JSON text decodes to."""


NOT_JSON: Final = _Marker()  # what decoded() gives for a body that is not JSON
UNREAD: Final = _Marker()  # no decoded value at hand: the body is decoded where needed


class Received:
    """One command as the command role handles it: its message, and its body decoded
    once, shared by the batch's read-ahead, the fingerprint, an Access refused event
    and the command's decoding.

    `value`: the body's JSON value, NOT_JSON, or UNREAD for a body over the size limit
    (refused with a 413 before anything reads it). Made anew for each run of a batch:
    a handler may keep what it was given.
    """

    __slots__ = ("message", "value")

    def __init__(self, message: Incoming, max_body: int) -> None:
        self.message = message
        self.value: Any = decoded(message.body) if len(message.body) <= max_body else UNREAD

    def fingerprint(self) -> str:
        """The body's fingerprint, from the value decoded already."""
        return fingerprint(self.message.body, self.value)


def decoded(body: bytes) -> Any:
    """The body's JSON value, or NOT_JSON."""
    try:
        return orjson.loads(body)
    except (orjson.JSONDecodeError, RecursionError):
        return NOT_JSON


def canonical(body: bytes, value: Any = UNREAD) -> bytes:
    """The body's canonical form: its decoded JSON value (`value`, when decoded already)
    encoded with sorted keys and no spacing, or, when it is not JSON, its bytes (each
    tagged, so that neither can pass for the other)."""
    if value is UNREAD:
        value = decoded(body)
    if value is not NOT_JSON:
        try:
            return _JSON + orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except (orjson.JSONEncodeError, RecursionError):
            pass
    return _RAW + body


def fingerprint(body: bytes, value: Any = UNREAD) -> str:
    """The lowercase hex SHA-256 of the body's canonical form."""
    return hashlib.sha256(canonical(body, value)).hexdigest()


def id_seed(key: bytes, message_id: str, body_fingerprint: str,
            headers: Mapping[str, Any] | None) -> str:
    """The seed of one delivery's event ids: HMAC-SHA256 under the deployment key of the
    message_id, the body's fingerprint and the Authorization header(s) as sent."""
    message = b"".join(
        # length-prefixed: no two splits collide
        len(part).to_bytes(8, "big") + part
        for part in (message_id.encode("utf-8", "surrogatepass"), body_fingerprint.encode(),
                     *_credentials(headers)))
    # One call into OpenSSL (hmac.digest) instead of an HMAC object fed part by part.
    return hmac.digest(key, message, "sha256").hex()


def _credentials(headers: Mapping[str, Any] | None) -> list[bytes]:
    """The Authorization header values as sent (any case of the name), in a stable order.

    The header, not the token parsed from it: a message whose header cannot be parsed
    (a 401) still has its own seed, and a redelivery carries the header byte for byte.
    """
    values = [value for name, value in (headers or {}).items()
              if isinstance(name, str) and name.lower() == "authorization"]
    return sorted(_as_bytes(value) for value in values)


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return b"b" + value
    return b"s" + str(value).encode("utf-8", "surrogatepass")
