"""Where the jwt Authority's public keys come from, and the JWKS file as one such source.

The sources are one PEM key (pem.py), a JWKS file (here) or a JWKS URL
(jwks_url.py); checks.key_source picks one from the settings. Each is a
KeySource: given a token's kid and alg it returns the key to verify it with,
or refuses (NotAuthenticated; AuthorityUnavailable when a key set URL cannot
be fetched). Symmetric (oct) keys are never used: a shared secret never
verifies a token here.

Revoking is removing: a JWKS file that is emptied (`{"keys": []}`), removed,
or holds no usable key any more fails closed at the next look (every token is
refused, logged as an error, `thelca_authority_keys` 0). A file that cannot be
parsed is most likely being rewritten: the keys read before stay in force for
UNREADABLE_GRACE seconds, then it fails closed too.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import jwt

from thelca import metrics
from thelca.errors import ConfigurationError, NotAuthenticated
from thelca.settings import OPTIONS

log = logging.getLogger(__name__)

# An unknown kid fetches the key set again at most this often, so a stream of
# forged kids cannot turn the worker into a load generator against the IdP.
REFETCH_COOLDOWN = 5.0
# How long a JWKS file that cannot be parsed (being rewritten, say: truncated or
# half-written) leaves the keys read before in force, before it fails closed.
UNREADABLE_GRACE = 15.0
NOT_IN_SET = "the token's key id (kid) is not in the key set"


class KeySetRemoved(ConfigurationError):
    """Raised when the key set file is not there: its keys are revoked."""


class KeySetUnreadable(ConfigurationError):
    """Raised when the key set file cannot be read or parsed now: maybe it is being rewritten."""


class KeySource(Protocol):
    """Where the public keys come from; returns the key a token names, or refuses."""

    description: str

    def key(self, kid: str | None, alg: str) -> jwt.PyJWK: ...

    def warm_up(self) -> None: ...

    def failure(self) -> str | None:
        """Why no token can be verified now (the key set was emptied or removed), or None."""
        ...



class JwksFile:
    """A JWKS file, read again when a token names a new kid or when the file changed.

    Both are looked at most every `cooldown` seconds: a rotation (a key added
    or retired by replacing the file) takes effect within that time, and so
    does a revocation (the file emptied or removed: every token is refused).
    A file that cannot be parsed keeps the keys read before for `grace`
    seconds from when that was first seen, then fails closed as well.
    """

    def __init__(
        self, path: str, *, cooldown: float = REFETCH_COOLDOWN, grace: float = UNREADABLE_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.description = f"{OPTIONS['jwks'].env} file {path}"
        self.cooldown = cooldown
        self.grace = grace
        self.clock = clock
        self._lock = threading.Lock()  # the metrics thread looks too
        # The key set in force and the stamp of the file it came from: a bad file at
        # start refuses the start; after it, only _reread replaces them.
        self._stamp = self._file_stamp()
        self._keys = _jwks_from_file(path)
        self._looked_at = clock()
        self._failure: str | None = None  # why every token is refused now
        self._unreadable_since: float | None = None
        metrics.AUTHORITY_KEYS.labels("jwks-file").set_function(self._keys_now)

    def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        with self._lock:
            self._look(kid)
            keys = self._keys
        if not keys:
            raise NotAuthenticated(NOT_IN_SET)
        found = key_for(keys, kid)
        if found is None:
            raise NotAuthenticated(NOT_IN_SET)
        return found

    def warm_up(self) -> None:
        """Nothing to fetch: the file was read at start."""

    def failure(self) -> str | None:
        with self._lock:
            self._look(None)
            return self._failure

    def _keys_now(self) -> float:
        """The keys in force, for the gauge: a scrape looks at the file like a token does."""
        with self._lock:
            self._look(None)
            return float(len(self._keys))

    def _look(self, kid: str | None) -> None:
        """Read the file again when due: it changed, a kid is new, or it was unreadable."""
        if self.clock() - self._looked_at < self.cooldown:
            return
        self._looked_at = self.clock()
        unknown = kid is not None and all(k.key_id != kid for k in self._keys)
        if unknown or self._unreadable_since is not None or self._file_stamp() != self._stamp:
            self._reread()

    def _file_stamp(self) -> tuple[int, int, int]:
        try:
            status = os.stat(self.path)
        except OSError:
            return (0, 0, 0)
        return (status.st_mtime_ns, status.st_size, status.st_ino)

    def _reread(self) -> None:
        self._stamp = self._file_stamp()
        try:
            keys = _jwks_from_file(self.path)
        except KeySetUnreadable as error:
            self._unreadable(str(error))
        except ConfigurationError as error:  # removed, emptied, or no usable key: revoked
            self._revoke(str(error))
        else:
            self._accept(keys)

    def _unreadable(self, why: str) -> None:
        now = self.clock()
        if self._unreadable_since is None:
            self._unreadable_since = now
            if self._keys:
                log.warning("jwt: %s; keeping the %d key(s) read before for up to %.0fs",
                            why, len(self._keys), self.grace)
        if now - self._unreadable_since >= self.grace:
            self._revoke(f"{why}, for {now - self._unreadable_since:.0f}s")

    def _revoke(self, why: str) -> None:
        """Fail closed: no key, every token refused, until the file holds keys again."""
        if why != self._failure:
            log.error("jwt: %s: its keys are revoked and every token is refused (401) until "
                      "it holds keys again", why)
        # Looked at again when the file changes (a stamp of its own), not before.
        self._keys, self._failure, self._unreadable_since = [], why, None

    def _accept(self, keys: list[jwt.PyJWK]) -> None:
        if self._failure is not None:
            log.warning("jwt: %s holds %d key(s) again: tokens are verified again",
                        self.path, len(keys))
        else:
            log.info("jwt: read %s again: %d key(s)", self.path, len(keys))
        self._keys, self._failure, self._unreadable_since = keys, None, None



def public_keys(keys: list[jwt.PyJWK]) -> list[jwt.PyJWK]:
    """The keys less symmetric (oct) ones: a shared secret never verifies a token here."""
    return [k for k in keys if k.key_type != "oct"]


def key_for(keys: list[jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    """The key the kid names (None when no key has it); without a kid, the only key."""
    if kid is None:
        if len(keys) == 1:
            return keys[0]
        raise NotAuthenticated("the token has no key id (kid) and the key set has several keys")
    return next((k for k in keys if k.key_id == kid), None)


def _jwks_from_file(path: str) -> list[jwt.PyJWK]:
    """The file's signing keys. KeySetRemoved when it is not there, KeySetUnreadable when it
    cannot be read or parsed (it may be being rewritten), ConfigurationError when it is a
    complete file that holds no usable key (emptied, say)."""
    env = OPTIONS["jwks"].env
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeySetRemoved(f"{env}={path} cannot be read (the file is gone)") from None
    except OSError as error:
        raise KeySetUnreadable(f"{env}={path} cannot be read ({error.strerror})") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise KeySetUnreadable(f"{env}={path} is not JSON: it must be a JSON Web Key Set "
                               '({"keys": [...]})') from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ConfigurationError(f'{env}={path} is not a JSON Web Key Set ({{"keys": [...]}})')
    if not data["keys"]:
        raise ConfigurationError(f"the key set file {env}={path} is empty: it holds no key")
    public = [k for k in data["keys"] if isinstance(k, dict) and k.get("kty") != "oct"]
    if len(public) < len(data["keys"]):
        log.warning("jwt: %s: ignored %d symmetric (oct) or malformed key(s); only public keys "
                    "verify tokens", path, len(data["keys"]) - len(public))
    try:
        keys = jwt.PyJWKSet(public).keys
    except jwt.PyJWTError:
        raise ConfigurationError(f"{env}={path} holds no usable public key") from None
    signing = [k for k in keys if k.public_key_use in ("sig", None)]
    if not signing:
        raise ConfigurationError(f"{env}={path} holds no signing key (use: sig)")
    return signing

