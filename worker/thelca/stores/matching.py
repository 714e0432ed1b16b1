"""What "equal as JSON" means to a search, written down once for every backend.

`search_items` finds the items whose properties hold every key of `where` with
an equal JSON value. Equal as JSON: the same type and value, object keys in any
order, arrays in order, and numbers by value (1 and 1.0 are equal, as they are
to PostgreSQL's jsonb), but never a boolean and a number (Python's True == 1 is
not JSON's). `canonical` is the one text of a value that every equal value
shares: the memory store compares it, SQLite indexes it.

PostgreSQL's jsonb cannot hold NUL (U+0000) in a string, which JSON allows and
thelca keeps: `jsonb_safe` maps every string (keys too) one to one onto a
string without NUL, so that equal values stay equal and different ones
different, and the same mapping applies to a `where`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

# Integers JSON numbers may be compared as: orjson writes up to 64 bits.
_SMALLEST, _LARGEST = -(2**63), 2**64 - 1
# An indexed value longer than this is kept as its hash: the index stays small, and two
# different values sharing a SHA-256 is not a thing that happens.
LONGEST_INDEXED = 128
_HASHED = "#"  # no JSON text starts with it


def canonical(value: Any) -> str:
    """The JSON text that every value equal to this one shares."""
    return orjson.dumps(_normal(value), option=orjson.OPT_SORT_KEYS).decode()


def indexed(value: Any) -> str:
    """What an index keeps of a property's value: its canonical text, or a hash of it."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        text = orjson.dumps(value).decode()  # already canonical: the common case, fast
    else:
        text = canonical(value)
    if len(text) <= LONGEST_INDEXED:
        return text
    return _HASHED + hashlib.sha256(text.encode()).hexdigest()


def matches(properties: dict[str, Any], wanted: dict[str, str]) -> bool:
    """Whether properties hold every key of a `where` given as {key: canonical(value)}."""
    return all(key in properties and canonical(properties[key]) == text
               for key, text in wanted.items())


def _normal(value: Any) -> Any:
    """Numbers with an integral value as integers, so that 1.0 is written as 1 is."""
    kind = type(value)
    if kind is float:
        if value.is_integer() and _SMALLEST <= value <= _LARGEST:
            return int(value)
        return value
    if kind is dict:
        return {key: _normal(child) for key, child in value.items()}
    if kind is list:
        return [_normal(child) for child in value]
    return value


# ---------------------------------------------------------------- PostgreSQL's jsonb

_ESCAPE = "\x01"


def jsonb_safe(value: Any) -> Any:
    """The value with every string (and key) mapped one to one onto a string without NUL:
    U+0001 becomes U+0001 U+0001 and NUL becomes U+0001 U+0002."""
    kind = type(value)
    if kind is str:
        if "\x00" in value or _ESCAPE in value:
            return value.replace(_ESCAPE, _ESCAPE * 2).replace("\x00", _ESCAPE + "\x02")
        return value
    if kind is dict:
        return {jsonb_safe(key): jsonb_safe(child) for key, child in value.items()}
    if kind is list:
        return [jsonb_safe(child) for child in value]
    return value


def jsonb_text(value: Any) -> str:
    """The JSON text of jsonb_safe(value), without walking the value when nothing needs it."""
    text = orjson.dumps(value)
    if b"\\u0000" in text or b"\\u0001" in text:  # how orjson writes NUL and U+0001
        text = orjson.dumps(jsonb_safe(value))
    return text.decode()
