"""Development keys: a key pair, its JWKS entry, and tokens signed with it (PyJWT).

Used by `thelca dev-keys` / `thelca dev-token`, and by the tests to play an
identity provider.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class DevKeysError(Exception):
    """Raised when the dev-keys directory is missing or does not hold what dev-keys wrote."""


@dataclass(frozen=True)
class KeyPair:
    """A development key that mints tokens: private key, algorithm, and its JWKS entry's kid."""

    private: PrivateKey
    algorithm: str
    kid: str

    @classmethod
    def generate(cls, algorithm: str = "RS256", kid: str | None = None) -> KeyPair:
        private: PrivateKey
        if algorithm == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif algorithm == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"dev keys are RS256 or ES256, not {algorithm}")
        return cls(private, algorithm, kid or f"dev-{secrets.token_hex(6)}")

    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def mint(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        """A token signed with this key; the kid header is set unless headers override it
        (a header given as None is left out)."""
        merged = {"kid": self.kid, **(headers or {})}
        return jwt.encode(claims, self.private, algorithm=self.algorithm,
                          headers={k: v for k, v in merged.items() if v is not None})


def log_signing_pems() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair that signs the log's checkpoints: (private PEM, public PEM)."""
    private = ed25519.Ed25519PrivateKey.generate()
    return (private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
            private.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))


def mint_from_directory(directory: Path, claims: dict[str, Any]) -> str:
    """A token signed with the key that `thelca dev-keys` wrote into directory."""
    try:
        pem = (directory / "private.pem").read_bytes()
        jwks = json.loads((directory / "jwks.json").read_text())
        entry = jwks["keys"][0]
        kid, algorithm = str(entry["kid"]), str(entry["alg"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise DevKeysError(f"{directory} does not hold the keys of `thelca dev-keys` "
                           f"({type(error).__name__}); run `thelca dev-keys --dir "
                           f"{directory}` first") from None
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: it has a password
        raise DevKeysError(f"{directory}/private.pem is not an unencrypted PEM private key; "
                           f"run `thelca dev-keys --dir DIR` for fresh keys") from None
    if not isinstance(private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise DevKeysError(f"{directory}/private.pem is not an RSA or EC key")
    return KeyPair(private, algorithm, kid).mint(claims)
