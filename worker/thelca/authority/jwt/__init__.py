"""The jwt Authority: OAuth 2.0 / OpenID Connect access tokens, verified with PyJWT.

It follows RFC 8725 (JWT best current practice): the algorithms are an
allow-list that never holds `none` nor a symmetric algorithm (the keys are
public keys, and a public key used as an HMAC secret would let anyone sign);
the key is chosen by `kid` from the configured keys only (`jku`, `x5u` and
`jwk` headers are never read); `exp` is required and `exp`, `nbf`, `iat` are
checked with a small leeway; `iss` and `aud` are checked when configured.

The user id is the `sub` claim; scopes come from `scope` (space-separated) or
`scp` (a list, or a string as Entra ID sends it). Refusals say what is wrong
in words that help a legitimate client, never echoing the token or its claims.

keys.py: where the public keys come from (KeySource), and a JWKS file;
pem.py: one PEM key; jwks_url.py: a JWKS URL.
checks.py: the claims, the scopes and ownership, and the Authority and its key source
built from settings.
"""

from thelca.authority.jwt.checks import (
    SCOPE_ADMIN,
    SCOPE_EVENTS,
    SCOPE_READ,
    SCOPE_WRITE,
    JwtAuthority,
    JwtRules,
    from_settings,
    key_source,
    rules_from_settings,
)
from thelca.authority.jwt.jwks_url import JwksUrl
from thelca.authority.jwt.keys import REFETCH_COOLDOWN, JwksFile, KeySource
from thelca.authority.jwt.pem import PemKey

__all__ = [
    "REFETCH_COOLDOWN",
    "SCOPE_ADMIN",
    "SCOPE_EVENTS",
    "SCOPE_READ",
    "SCOPE_WRITE",
    "JwksFile",
    "JwksUrl",
    "JwtAuthority",
    "JwtRules",
    "KeySource",
    "PemKey",
    "from_settings",
    "key_source",
    "rules_from_settings",
]
