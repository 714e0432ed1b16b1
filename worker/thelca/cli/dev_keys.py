"""`thelca dev-keys` and `thelca dev-token`: try the jwt Authority locally, without an IdP.

dev-keys writes a fresh key pair and a JWKS file naming its public key by kid;
dev-token mints a token signed with that private key. They are for development:
a real deployment points THELCA_JWKS at its identity provider.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from thelca.cli.common import EXIT_USAGE, positive_int
from thelca.settings import Settings

DEFAULT_DIR = "thelca-dev-keys"
PRIVATE = "private.pem"
PUBLIC = "public.pem"
JWKS = "jwks.json"
LOG_SIGNING = "log-signing.pem"  # signs the event log's checkpoints (THELCA_LOG_SIGNING_KEY)
LOG_SIGNING_PUBLIC = "log-signing.pub.pem"  # what `thelca audit --public-key` checks them with
DEFAULT_SCOPE = "items:read items:write"


def add_dev_keys_parsers(sub: Any) -> None:
    """Add `dev-keys` and `dev-token` to the thelca parser."""
    keys = sub.add_parser(
        "dev-keys", help="write a key pair and a JWKS file to try the jwt Authority",
        description="Write a fresh key pair (private.pem, readable by you only, and "
        "public.pem) and jwks.json (the public key with its kid) into a directory. Then run "
        f"the worker with THELCA_AUTHORITY=jwt THELCA_JWKS=DIR/{JWKS} and mint tokens with "
        "`thelca dev-token`. Also an Ed25519 key pair that signs the event log's checkpoints: "
        f"{LOG_SIGNING} (readable by you only; THELCA_LOG_SIGNING_KEY) and {LOG_SIGNING_PUBLIC} "
        "(for `thelca audit --public-key`). For development only.",
    )
    keys.add_argument("--dir", default=DEFAULT_DIR,
                      help=f"where to write the keys (default {DEFAULT_DIR})")
    keys.add_argument("--algorithm", choices=("RS256", "ES256"), default="RS256",
                      help="RS256 (RSA 2048) or ES256 (P-256); default RS256")
    keys.set_defaults(func=run_dev_keys)

    token = sub.add_parser(
        "dev-token", help="print a token signed with the dev-keys key",
        description="Mint a JWT signed with the private key that `thelca dev-keys` wrote, "
        "and print only the token. For development only.",
    )
    token.add_argument("--sub", required=True, help="the user id (the sub claim)")
    token.add_argument("--scope", default=DEFAULT_SCOPE,
                       help=f"space-separated scopes (default {DEFAULT_SCOPE!r}); also "
                       "items:admin, events:read")
    token.add_argument("--ttl", type=positive_int, default=3600,
                       help="seconds until it expires (default 3600)")
    token.add_argument("--aud", help="the aud claim (match THELCA_JWT_AUDIENCE)")
    token.add_argument("--iss", help="the iss claim (match THELCA_JWT_ISSUER)")
    token.add_argument("--keys", default=DEFAULT_DIR,
                       help=f"the dev-keys directory (default {DEFAULT_DIR})")
    token.set_defaults(func=run_dev_token)


def run_dev_keys(args: argparse.Namespace, settings: Settings) -> int:
    """Write private.pem (0600), public.pem, jwks.json and the log signing pair; never overwrite."""
    from thelca.devkeys import KeyPair, log_signing_pems

    directory = Path(args.dir)
    for existing in (directory / PRIVATE, directory / LOG_SIGNING):
        if not existing.exists():
            continue
        print(f"thelca dev-keys: {existing} already exists: use those keys, or "
              "remove the directory (or give another --dir) for fresh ones", file=sys.stderr)
        return EXIT_USAGE
    pair = KeyPair.generate(args.algorithm)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(directory / PRIVATE, pair.private_pem())
    (directory / PUBLIC).write_bytes(pair.public_pem())
    (directory / JWKS).write_text(json.dumps({"keys": [pair.public_jwk()]}, indent=2) + "\n")
    signing, verifying = log_signing_pems()
    _write_private(directory / LOG_SIGNING, signing)
    (directory / LOG_SIGNING_PUBLIC).write_bytes(verifying)
    print(f"wrote {directory / PRIVATE} (mode 0600), {directory / PUBLIC} and "
          f"{directory / JWKS} (kid {pair.kid}, {pair.algorithm})")
    print(f"wrote {directory / LOG_SIGNING} (mode 0600) and {directory / LOG_SIGNING_PUBLIC}: "
          "the event log's checkpoint signing key pair (Ed25519)")
    print(f"run:  THELCA_AUTHORITY=jwt THELCA_JWKS={directory / JWKS} "
          f"THELCA_LOG_SIGNING_KEY={directory / LOG_SIGNING} thelca run")
    print(f"then: thelca publish create --token \"$(thelca dev-token --keys {directory} "
          "--sub alice)\"")
    print(f"audit: thelca audit --public-key {directory / LOG_SIGNING_PUBLIC}")
    return 0


def run_dev_token(args: argparse.Namespace, settings: Settings) -> int:
    """Print one token, and nothing else on stdout."""
    from thelca.devkeys import DevKeysError, mint_from_directory

    now = int(time.time())
    claims: dict[str, Any] = {"sub": args.sub, "scope": args.scope, "iat": now,
                              "exp": now + args.ttl, "jti": secrets.token_hex(8)}
    if args.aud:
        claims["aud"] = args.aud
    if args.iss:
        claims["iss"] = args.iss
    try:
        token = mint_from_directory(Path(args.keys), claims)
    except DevKeysError as error:
        print(f"thelca dev-token: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(token)
    return 0


def _write_private(path: Path, pem: bytes) -> None:
    # Created with 0600 from the start, never readable by others for a moment.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
