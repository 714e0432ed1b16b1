"""The Authority interface: the one place that decides who may do what.

In the spirit of the original server's Authority: every check returns the
user id that the item store records, or raises. Authentication (401) is a
step of its own because the contract answers 400 and 404 between it and the
item checks (403).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from thelca.domain.model import Item, Link
from thelca_client.contract import JSON


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its user id and scopes, for the checks. Never the token."""

    user_id: str
    scopes: frozenset[str] = field(default_factory=frozenset)


class Authority(Protocol):
    """Decides who a token belongs to and what they may do: the user id, or 401 / 403."""

    name: str

    def authenticate(self, token: str | None) -> Principal: ...

    def check_create_item(self, principal: Principal, dictionary: JSON) -> str: ...

    def check_read_item(self, principal: Principal, item: Item) -> str: ...

    def check_update_item(self, principal: Principal, current: Item, proposed: Item) -> str: ...

    def check_read_events(self, principal: Principal) -> str: ...

    # v1.1: links, and searches.

    def check_create_link(self, principal: Principal, dictionary: JSON) -> str: ...

    def check_read_link(self, principal: Principal, link: Link) -> str: ...

    def check_update_link(self, principal: Principal, current: Link, proposed: Link) -> str: ...

    def check_delete_link(self, principal: Principal, link: Link) -> str: ...

    def check_search_items(self, principal: Principal, where: JSON) -> str: ...

    def check_search_links(self, principal: Principal, query: JSON) -> str: ...
