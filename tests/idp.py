"""A stand-in identity provider for the tests: keys, a JWKS file or https URL, tokens, forgeries.

The real code verifies with PyJWT; here PyJWT mints the honest tokens, and the
forgeries an attacker would try are built by hand where PyJWT refuses to make
them (HS256 keyed with a public key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from thelca.devkeys import KeyPair

ISSUER = "https://idp.thelca.test"
AUDIENCE = "thelca-test"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


@dataclass
class Idp:
    """Keys, the JWKS file that publishes some of them, and tokens signed with them."""

    directory: Path
    keys: list[KeyPair] = field(default_factory=list)
    issuer: str = ISSUER
    audience: str = AUDIENCE

    @classmethod
    def create(cls, directory: Path) -> Idp:
        directory.mkdir(parents=True, exist_ok=True)
        idp = cls(directory, [KeyPair.generate("RS256", kid="key-rsa"),
                              KeyPair.generate("ES256", kid="key-ec")])
        idp.publish(idp.keys)
        return idp

    @property
    def jwks_file(self) -> Path:
        return self.directory / "jwks.json"

    def jwks(self, keys: list[KeyPair]) -> bytes:
        return json.dumps({"keys": [k.public_jwk() for k in keys]}).encode()

    def publish(self, keys: list[KeyPair]) -> None:
        """Write the JWKS file atomically, as a deployment would roll it out."""
        temporary = self.jwks_file.with_suffix(".tmp")
        temporary.write_bytes(self.jwks(keys))
        os.replace(temporary, self.jwks_file)

    def env(self) -> dict[str, str]:
        return {"THELCA_AUTHORITY": "jwt", "THELCA_JWKS": str(self.jwks_file),
                "THELCA_JWT_ISSUER": self.issuer, "THELCA_JWT_AUDIENCE": self.audience}

    def claims(self, sub: Any = "alice", scope: str = "items:read items:write",
               **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"sub": sub, "scope": scope, "iss": self.issuer, "aud": self.audience,
                  "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, sub: str = "alice", scope: str = "items:read items:write", *,
              key: KeyPair | None = None, headers: dict[str, Any] | None = None,
              **overrides: Any) -> str:
        """A token signed with `key` (default the first); a claim set to None is left out."""
        return (key or self.keys[0]).mint(self.claims(sub, scope, **overrides), headers)


def unsigned(claims: dict[str, Any]) -> str:
    """alg none: a token with no signature at all."""
    return f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(claims)}."


def hs256_with_public_key(key: KeyPair, claims: dict[str, Any]) -> str:
    """The classic key-confusion forgery: HMAC-SHA256 keyed with the public key's PEM."""
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': key.kid})}." \
        f"{b64json(claims)}"
    mac = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def with_payload(token: str, claims: dict[str, Any]) -> str:
    """The token's header and signature around other claims (a tampered payload)."""
    header, _, signature = token.split(".")
    return f"{header}.{b64json(claims)}.{signature}"


# ---------------------------------------------------------------- a JWKS over https


class JwksServer:
    """Serves a JWKS at https://localhost:PORT/jwks.json and counts the fetches."""

    def __init__(self, context: ssl.SSLContext, body: bytes, port: int = 0) -> None:
        self.context = context
        self.body = body
        self.content_type = "application/json"
        self.fetches = 0
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}/jwks.json"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", owner.content_type)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.socket = self.context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)


@contextmanager
def jwks_server(context: ssl.SSLContext, body: bytes) -> Iterator[JwksServer]:
    server = JwksServer(context, body)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def broken_tokens(idp: Idp) -> dict[str, tuple[str, str]]:
    """What an attacker or a broken client sends: {what: (token, what the 401 says)}."""
    now = int(time.time())
    stranger = KeyPair.generate("RS256", kid=idp.keys[0].kid)  # a known kid, another key
    unknown = KeyPair.generate("RS256", kid="key-nobody-knows")
    good = idp.token()
    return {
        "expired": (idp.token(exp=now - 120), "the token has expired"),
        "not yet valid": (idp.token(nbf=now + 300), "not valid yet"),
        "issued in the future": (idp.token(iat=now + 300), "not valid yet"),
        "wrong audience": (idp.token(aud="someone-else"), "not meant for this service"),
        "no audience": (idp.token(aud=None), "no aud claim"),
        "wrong issuer": (idp.token(iss="https://evil.example"), "issuer"),
        "signed by an unknown key": (stranger.mint(idp.claims()), "signature does not verify"),
        "unknown kid": (unknown.mint(idp.claims()), "not in the key set"),
        "alg none": (unsigned(idp.claims()), "algorithm is not accepted"),
        "HS256 keyed with the RSA public key": (
            hs256_with_public_key(idp.keys[0], idp.claims()), "algorithm is not accepted"),
        "ES256 header on the RSA key's kid": (
            idp.keys[1].mint(idp.claims(), {"kid": idp.keys[0].kid}), "does not match its key"),
        "RS512, not in the allow-list": (
            KeyPair(idp.keys[0].private, "RS512", idp.keys[0].kid).mint(idp.claims()),
            "algorithm is not accepted"),
        "missing exp": (idp.token(exp=None), "no exp claim"),
        "missing sub": (idp.keys[0].mint(idp.claims(sub=None)), "no sub claim"),
        "sub not a string": (idp.keys[0].mint(idp.claims(sub=42)), "sub claim"),
        "tampered payload": (with_payload(good, idp.claims(sub="mallory")),
                             "signature does not verify"),
        "jwk header with the attacker's key": (
            stranger.mint(idp.claims(), {"jwk": stranger.public_jwk()}),
            "signature does not verify"),
        "jku header pointing at the attacker": (
            stranger.mint(idp.claims(), {"jku": "https://evil.example/jwks.json"}),
            "signature does not verify"),
        "x5u header pointing at the attacker": (
            stranger.mint(idp.claims(), {"x5u": "https://evil.example/cert.pem"}),
            "signature does not verify"),
        "garbage": (f"not-a-jwt-{uuid.uuid4().hex}", "not a well-formed JWT"),
        "three parts of garbage": (f"{uuid.uuid4().hex}.b.c", "not a well-formed JWT"),
        "header not JSON": ("bm90IGpzb24." + good.split(".", 1)[1], "not a well-formed JWT"),
        "empty": ("", "no token"),
    }
