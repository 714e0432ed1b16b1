"""The jwt Authority's checks: the token's header and claims, then what its scopes allow.

A token is verified with the key its kid names (from a KeySource, see keys.py)
against JwtRules: the allowed algorithms, the issuer and audience when
configured, a required exp, and a small leeway. The user id is `sub`; scopes
come from `scope` or `scp`; an update also needs the item's creator or the
admin scope, and so does an update or delete of a link.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import jwt
from jwt.algorithms import get_default_algorithms

from thelca.authority.base import Principal
from thelca.authority.jwt.jwks_url import JwksUrl
from thelca.authority.jwt.keys import JwksFile, KeySource
from thelca.authority.jwt.pem import PemKey
from thelca.domain.model import Item, Link
from thelca.errors import ConfigurationError, Forbidden, NotAuthenticated
from thelca.settings import OPTIONS, Settings
from thelca_client.contract import JSON

SCOPE_READ = "items:read"
SCOPE_WRITE = "items:write"
SCOPE_ADMIN = "items:admin"
SCOPE_EVENTS = "events:read"
LONGEST_SUB = 255

# Refusals, by PyJWT's error type; the first match wins, so subclasses come first.
REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (its nbf or iat is in the future)"),
    (jwt.InvalidAudienceError, "the token is not meant for this service (aud)"),
    (jwt.InvalidIssuerError, "the token was not issued by the issuer this service trusts (iss)"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token's algorithm does not match its key"),
    (jwt.InvalidIssuedAtError, "the token's iat claim is not a number"),
    (jwt.exceptions.InvalidSubjectError, "the token's sub claim is not a string"),
    (jwt.DecodeError, "the token is not a well-formed JWT"),
    (jwt.InvalidKeyError, "the token's key cannot verify it"),
)


# ---------------------------------------------------------------- the Authority


@dataclass(frozen=True)
class JwtRules:
    """What a token must satisfy besides its signature."""

    algorithms: tuple[str, ...]
    issuer: str | None
    audience: str | None
    leeway: int


class JwtAuthority:
    """The Authority for real deployments: verifies Bearer JWTs and decides by their scopes."""

    name = "jwt"

    def __init__(self, keys: KeySource, rules: JwtRules) -> None:
        self.keys = keys
        self.rules = rules

    def __repr__(self) -> str:
        return f"JwtAuthority({self.keys.description}, {self.rules})"

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise NotAuthenticated("no token")
        header = _header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.rules.algorithms:
            raise NotAuthenticated("the token's algorithm is not accepted: this service accepts "
                                   + ", ".join(self.rules.algorithms))
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise NotAuthenticated("the token's key id (kid) is not a string")
        claims = self._verified(token, self.keys.key(kid, alg), alg)
        return Principal(_subject(claims), _scopes(claims))

    def _verified(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        rules = self.rules
        required = ["exp", "sub"] + (["iss"] if rules.issuer else []) + \
            (["aud"] if rules.audience else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], audience=rules.audience, issuer=rules.issuer,
                leeway=rules.leeway,
                options={"require": required, "verify_aud": rules.audience is not None},
            )
        except jwt.MissingRequiredClaimError as missing:
            raise NotAuthenticated(f"the token has no {missing.claim} claim") from None
        except (jwt.InvalidTokenError, jwt.InvalidKeyError) as error:
            raise NotAuthenticated(_reason(error)) from None
        return claims

    # ------------------------------------------------------------ what a user may do

    def check_create_item(self, principal: Principal, dictionary: JSON) -> str:
        return _needs(principal, SCOPE_WRITE, "create items")

    def check_read_item(self, principal: Principal, item: Item) -> str:
        return _needs(principal, SCOPE_READ, "read items")

    def check_update_item(self, principal: Principal, current: Item, proposed: Item) -> str:
        _needs(principal, SCOPE_WRITE, "update items")
        return _owner_or_admin(principal, current.created_by, "item", "update")

    def check_read_events(self, principal: Principal) -> str:
        return _needs(principal, SCOPE_EVENTS, "read the event history")

    def check_create_link(self, principal: Principal, dictionary: JSON) -> str:
        return _needs(principal, SCOPE_WRITE, "create links")

    def check_read_link(self, principal: Principal, link: Link) -> str:
        return _needs(principal, SCOPE_READ, "read links")

    def check_update_link(self, principal: Principal, current: Link, proposed: Link) -> str:
        _needs(principal, SCOPE_WRITE, "update links")
        return _owner_or_admin(principal, current.created_by, "link", "update")

    def check_delete_link(self, principal: Principal, link: Link) -> str:
        _needs(principal, SCOPE_WRITE, "delete links")
        return _owner_or_admin(principal, link.created_by, "link", "delete")

    def check_search_items(self, principal: Principal, where: JSON) -> str:
        return _needs(principal, SCOPE_READ, "search items")

    def check_search_links(self, principal: Principal, query: JSON) -> str:
        return _needs(principal, SCOPE_READ, "search links")


def _header(token: str) -> dict[str, Any]:
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise NotAuthenticated("the token is not a well-formed JWT") from None


def _reason(error: Exception) -> str:
    for kind, reason in REASONS:
        if isinstance(error, kind):
            return reason
    return "the token is not valid"


def _subject(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= LONGEST_SUB or not sub.isprintable():
        raise NotAuthenticated(f"the token's sub claim is not a user id (a printable string of "
                               f"1 to {LONGEST_SUB} characters)")
    return sub


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    scopes: set[str] = set()
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(v for v in value if isinstance(v, str))
    return frozenset(scopes)


def _owner_or_admin(principal: Principal, creator: str, what: str, verb: str) -> str:
    if creator != principal.user_id and SCOPE_ADMIN not in principal.scopes:
        raise Forbidden(f"only the user who created this {what} may {verb} it, or a token "
                        f"with the {SCOPE_ADMIN} scope")
    return principal.user_id


def _needs(principal: Principal, scope: str, to: str) -> str:
    if scope not in principal.scopes:
        raise Forbidden(f"the token lacks the {scope} scope needed to {to}")
    return principal.user_id


# ---------------------------------------------------------------- from settings


def rules_from_settings(settings: Settings) -> JwtRules:
    """The allow-list and claim rules; refuses `none` and symmetric algorithms."""
    env = OPTIONS["jwt_algorithms"].env
    algorithms = tuple(a.strip() for a in settings.jwt_algorithms.split(",") if a.strip())
    if not algorithms:
        raise ConfigurationError(f"{env} is empty: name the algorithms your issuer signs with, "
                                 "such as RS256,ES256")
    known = set(get_default_algorithms()) - {"none"}
    for alg in algorithms:
        if alg.lower() == "none":
            raise ConfigurationError(f"{env}: 'none' would accept unsigned tokens; remove it")
        if alg.startswith("HS"):
            raise ConfigurationError(
                f"{env}: {alg} is a symmetric (HMAC) algorithm, but the keys of "
                f"{OPTIONS['jwks'].env} / {OPTIONS['jwt_key_file'].env} are public keys, and a "
                f"public key must never serve as an HMAC secret (anyone could sign with it): "
                f"remove {alg}")
        if alg not in known:
            raise ConfigurationError(f"{env}: {alg!r} is not an algorithm; use some of "
                                     f"{', '.join(sorted(known - _symmetric(known)))}")
    return JwtRules(algorithms, settings.jwt_issuer or None, settings.jwt_audience or None,
                    settings.jwt_leeway)


def from_settings(settings: Settings) -> JwtAuthority:
    """The jwt Authority the settings describe; a key set URL is not fetched yet."""
    rules = rules_from_settings(settings)
    return JwtAuthority(key_source(settings, rules.algorithms), rules)


def _symmetric(algorithms: Iterable[str]) -> set[str]:
    return {a for a in algorithms if a.startswith("HS")}


def key_source(settings: Settings, algorithms: Iterable[str]) -> KeySource:
    """The keys: THELCA_JWKS (https URL or file) or THELCA_JWT_KEY_FILE, exactly one."""
    jwks_env, pem_env = OPTIONS["jwks"].env, OPTIONS["jwt_key_file"].env
    if settings.jwks and settings.jwt_key_file:
        raise ConfigurationError(f"both {jwks_env} and {pem_env} are set: choose one")
    if settings.jwt_key_file:
        return PemKey(settings.jwt_key_file, algorithms)
    if not settings.jwks:
        raise ConfigurationError(
            f"the jwt Authority has no keys: set {jwks_env} (an https URL or a file of your "
            f"issuer's JSON Web Key Set) or {pem_env} (one PEM public key). To try it locally: "
            f"`thelca dev-keys`, then {jwks_env}=thelca-dev-keys/jwks.json")
    scheme = urlparse(settings.jwks).scheme.lower()
    if scheme == "https":
        return JwksUrl(settings.jwks)
    if scheme == "http":
        raise ConfigurationError(f"{jwks_env}: the keys must come over https, not http")
    return JwksFile(settings.jwks)
