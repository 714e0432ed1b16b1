"""The original server's placeholder Authority, for development and tests only."""

from __future__ import annotations

from thelca.authority.base import Principal
from thelca.domain.model import Item, Link
from thelca.errors import NotAuthenticated
from thelca_client.contract import JSON

REFUSED_TOKEN = "BAAD"  # noqa: S105 - the seed's one refused token, not a secret
USER_PREFIX = "a-test-only-id-"


class TestOnlyAuthority:
    """For development and tests: any token but BAAD is a user, and every check passes.

    That user is a-test-only-id-<token>: the user id contains the token by design,
    so never use this in production.
    """

    __test__ = False  # not a pytest test class, despite the name
    name = "test-only"

    def authenticate(self, token: str | None) -> Principal:
        if not token or token == REFUSED_TOKEN:
            raise NotAuthenticated("the token was refused")
        return Principal(USER_PREFIX + token)

    def check_create_item(self, principal: Principal, dictionary: JSON) -> str:
        return principal.user_id

    def check_read_item(self, principal: Principal, item: Item) -> str:
        return principal.user_id

    def check_update_item(self, principal: Principal, current: Item, proposed: Item) -> str:
        return principal.user_id

    def check_read_events(self, principal: Principal) -> str:
        return principal.user_id

    def check_create_link(self, principal: Principal, dictionary: JSON) -> str:
        return principal.user_id

    def check_read_link(self, principal: Principal, link: Link) -> str:
        return principal.user_id

    def check_update_link(self, principal: Principal, current: Link, proposed: Link) -> str:
        return principal.user_id

    def check_delete_link(self, principal: Principal, link: Link) -> str:
        return principal.user_id

    def check_search_items(self, principal: Principal, where: JSON) -> str:
        return principal.user_id

    def check_search_links(self, principal: Principal, query: JSON) -> str:
        return principal.user_id
