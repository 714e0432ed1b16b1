"""A JWKS at an https URL as the jwt Authority's key source, through PyJWKClient."""

from __future__ import annotations

import logging
from collections.abc import Callable
from ssl import SSLContext
from typing import Any

import jwt

from thelca import metrics
from thelca.authority.jwt.keys import NOT_IN_SET, REFETCH_COOLDOWN, key_for, public_keys
from thelca.errors import AuthorityUnavailable, ConfigurationError, NotAuthenticated
from thelca.settings import OPTIONS

log = logging.getLogger(__name__)

JWKS_LIFESPAN = 300.0  # a URL's key set is fetched again after this long
FETCH_TIMEOUT = 10.0


class JwksUrl:
    """A JWKS at an https URL, through PyJWKClient: cached, fetched again for a new kid.

    A fetch that fails (network, the IdP down, not a key set) is the
    infrastructure's fault, not the client's: AuthorityUnavailable, and the
    worker retries the batch.
    """

    def __init__(
        self, url: str, *, cooldown: float = REFETCH_COOLDOWN, ssl_context: SSLContext | None = None
    ) -> None:
        self.url = url
        self.description = f"{OPTIONS['jwks'].env} {url}"
        self._client = jwt.PyJWKClient(
            url, cache_jwk_set=True, lifespan=JWKS_LIFESPAN, timeout=FETCH_TIMEOUT,
            ssl_context=ssl_context, cooldown_duration=cooldown,
        )

    def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        keys = public_keys(self._fetched(self._client.get_signing_keys))
        found = key_for(keys, kid)
        if found is None and kid is not None:
            found = self._fetched(lambda: self._refreshed(kid))
        if found is None:
            raise NotAuthenticated(NOT_IN_SET)
        return found

    def warm_up(self) -> None:
        """Fetch the key set now: an unreachable URL shows in the log at start, and a key
        set that answers but holds no usable signing key refuses the start (PyJWKClient
        would fail every token on it, and the worker would retry every batch forever)."""
        env = OPTIONS["jwks"].env
        try:
            jwk_set = self._client.get_jwk_set()
        except (jwt.PyJWKClientConnectionError, OSError) as error:
            log.warning("jwt: the key set at %s cannot be fetched (%s); commands wait (are "
                        "retried) until it answers", self.url, str(error)[:200])
            return
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError):
            raise ConfigurationError(f"{env}={self.url} does not answer with a JSON Web Key Set "
                                     '({"keys": [...]}) holding a usable public key') from None
        # PyJWKClient's own rule for a signing key (use sig or unset, and a kid), less oct.
        usable = [k for k in public_keys(jwk_set.keys)
                  if k.public_key_use in ("sig", None) and k.key_id]
        if not usable:
            raise ConfigurationError(
                f"{env}={self.url} holds no usable signing key: every key of the set needs a "
                "kid, a public key type (RSA, EC, OKP) and use sig (or no use)")
        log.info("jwt: %d signing key(s) from %s", len(usable), self.url)
        metrics.AUTHORITY_KEYS.labels("jwks-url").set(len(usable))

    def failure(self) -> str | None:
        """Why the key set cannot be used now; fetching it when it is not cached."""
        try:
            keys = public_keys(self._client.get_signing_keys())
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError, OSError) as error:
            return (f"the key set at {self.url} cannot be fetched or used "
                    f"({type(error).__name__}: {str(error)[:200]})")
        metrics.AUTHORITY_KEYS.labels("jwks-url").set(len(keys))
        return None if keys else f"the key set at {self.url} holds no usable signing key"

    def _refreshed(self, kid: str) -> jwt.PyJWK | None:
        try:
            found = self._client.get_signing_key(kid)  # refetches, unless cooling down
        except jwt.PyJWKClientConnectionError:
            raise
        except jwt.PyJWKClientError:
            return None  # still unknown after the refetch
        return next(iter(public_keys([found])), None)

    def _fetched(self, fetch: Callable[[], Any]) -> Any:
        try:
            return fetch()
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError, OSError) as error:
            raise AuthorityUnavailable(
                f"the key set at {self.url} cannot be fetched or used "
                f"({type(error).__name__}: {str(error)[:200]})") from None

