"""How the contract's error messages name a value: its JSON type, a list, a value cut short.

Every refusal a decoder raises says what it got in these words, so that a
client's developer reads the same phrasing whichever field was wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def json_type(value: Any) -> str:
    """JSON's name for the value's type ("an object", "a number", "null"...)."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def listed(names: Iterable[str]) -> str:
    """The names, comma-separated."""
    return ", ".join(names)


def shown(value: Any) -> str:
    """The value's repr, cut to 40 characters: a refusal never echoes a long input."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
