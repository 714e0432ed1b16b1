"""One PEM public key (or certificate) as the jwt Authority's key source (THELCA_JWT_KEY_FILE).

Read once at start; a restart reads it again. A private key is refused: the
worker is given only the public half.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from thelca import metrics
from thelca.errors import ConfigurationError, NotAuthenticated
from thelca.settings import OPTIONS


class PemKey:
    """One PEM public key (or certificate), for every allowed algorithm that fits it."""

    def __init__(self, path: str, algorithms: Iterable[str]) -> None:
        env = OPTIONS["jwt_key_file"].env
        self.description = f"{env} {path}"
        public = _load_pem(path, env)
        jwk = _public_jwk(public)
        self._by_alg: dict[str, jwt.PyJWK] = {}
        for alg in algorithms:
            try:
                candidate = jwt.PyJWK(jwk, algorithm=alg)
                candidate.Algorithm.prepare_key(candidate.key)  # checks an EC key's curve
            except jwt.PyJWTError:
                continue  # this algorithm does not fit this kind of key
            self._by_alg[alg] = candidate
        if not self._by_alg:
            raise ConfigurationError(
                f"{env}={path}: a {jwk['kty']} key fits none of the algorithms in "
                f"{OPTIONS['jwt_algorithms'].env} ({', '.join(algorithms)})")

    def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        found = self._by_alg.get(alg)
        if found is None:
            raise NotAuthenticated("the token's algorithm does not match its key")
        return found

    def warm_up(self) -> None:
        """Nothing to fetch: the key was read at start."""
        metrics.AUTHORITY_KEYS.labels("pem").set(1)

    def failure(self) -> str | None:
        return None  # read once at start; a restart reads it again



def _load_pem(path: str, env: str) -> Any:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(f"{env}={path} cannot be read ({error.strerror})") from None
    if b"PRIVATE KEY" in data:
        raise ConfigurationError(f"{env}={path} holds a private key: give the worker only the "
                                 "public key")
    try:
        if b"BEGIN CERTIFICATE" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigurationError(f"{env}={path} is not a PEM public key or certificate") \
            from None


def _public_jwk(public: Any) -> dict[str, Any]:
    if isinstance(public, rsa.RSAPublicKey):
        return RSAAlgorithm.to_jwk(public, as_dict=True)
    if isinstance(public, ec.EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(public, as_dict=True)
    if isinstance(public, ed25519.Ed25519PublicKey):
        return OKPAlgorithm.to_jwk(public, as_dict=True)
    raise ConfigurationError(f"{OPTIONS['jwt_key_file'].env}: only RSA, EC and Ed25519 keys "
                             "are supported")

