"""The jwt Authority on its own: settings, keys, every refusal, scopes and ownership."""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.idp import Idp, JwksServer, broken_tokens, hs256_with_public_key, jwks_server
from tests.pki import Ca
from thelca.authority.base import Principal
from thelca.authority.jwt import (
    JwksFile,
    JwksUrl,
    JwtAuthority,
    JwtRules,
    PemKey,
    from_settings,
)
from thelca.bootstrap import build_authority, check_authority_choice
from thelca.devkeys import DevKeysError, KeyPair, mint_from_directory
from thelca.domain.model import Item
from thelca.errors import AuthorityUnavailable, ConfigurationError, Forbidden, NotAuthenticated
from thelca.settings import Settings

RULES = JwtRules(("RS256", "ES256"), "https://idp.thelca.test", "thelca-test", 30)


@pytest.fixture
def idp(tmp_path: Path) -> Idp:
    return Idp.create(tmp_path / "idp")


@pytest.fixture
def authority(idp: Idp) -> JwtAuthority:
    return JwtAuthority(JwksFile(str(idp.jwks_file)), RULES)


def refusal(authority: JwtAuthority, token: str | None) -> str:
    with pytest.raises(NotAuthenticated) as refused:
        authority.authenticate(token)
    return str(refused.value)


# ---------------------------------------------------------------- accepted tokens


def test_a_good_token_is_its_sub_with_its_scopes(idp: Idp, authority: JwtAuthority) -> None:
    principal = authority.authenticate(idp.token("alice", "items:read items:write"))
    assert principal == Principal("alice", frozenset({"items:read", "items:write"}))


def test_both_keys_of_the_set_are_accepted_rsa_and_ec(idp: Idp, authority: JwtAuthority) -> None:
    for key in idp.keys:
        assert authority.authenticate(idp.token("alice", key=key)).user_id == "alice"


@pytest.mark.parametrize(("claims", "scopes"), [
    ({"scope": "items:read  events:read"}, {"items:read", "events:read"}),
    ({"scope": None, "scp": ["items:write", 7]}, {"items:write"}),
    ({"scope": None, "scp": "items:admin items:read"}, {"items:admin", "items:read"}),
    ({"scope": "items:read", "scp": ["items:write"]}, {"items:read", "items:write"}),
    ({"scope": None}, set()),
])
def test_scopes_come_from_scope_or_scp(
    idp: Idp, authority: JwtAuthority, claims: dict[str, Any], scopes: set[str]
) -> None:
    token = idp.keys[0].mint(idp.claims(**claims))
    assert authority.authenticate(token).scopes == scopes


def test_the_leeway_absorbs_small_clock_skew(idp: Idp, authority: JwtAuthority) -> None:
    now = int(time.time())
    assert authority.authenticate(idp.token(exp=now - 10, iat=now - 100))
    assert authority.authenticate(idp.token(nbf=now + 10, iat=now + 10))


def test_iss_and_aud_are_not_checked_when_unset(idp: Idp) -> None:
    lax = JwtAuthority(JwksFile(str(idp.jwks_file)), replace(RULES, issuer=None, audience=None))
    assert lax.authenticate(idp.token(iss="https://elsewhere", aud="other")).user_id == "alice"
    assert lax.authenticate(idp.token(iss=None, aud=None)).user_id == "alice"


# ---------------------------------------------------------------- refused tokens


def test_every_broken_or_forged_token_is_refused_with_a_reason(
    idp: Idp, authority: JwtAuthority
) -> None:
    for what, (token, reason) in broken_tokens(idp).items():
        said = refusal(authority, token)
        assert reason in said, f"{what}: {said!r}"
        for part in [token, *token.split(".")]:
            assert len(part) < 8 or part not in said, f"{what}: the refusal echoes the token"


def test_a_token_without_kid_needs_a_single_key_set(idp: Idp, tmp_path: Path) -> None:
    token = idp.keys[0].mint(idp.claims(), {"kid": None})
    assert "no key id" in refusal(JwtAuthority(JwksFile(str(idp.jwks_file)), RULES), token)
    idp.publish(idp.keys[:1])
    single = JwtAuthority(JwksFile(str(idp.jwks_file)), RULES)
    assert single.authenticate(token).user_id == "alice"


# ---------------------------------------------------------------- what a user may do


def _item(created_by: str) -> Item:
    return Item("id-1", "2026-01-01T00:00:00.000000+00:00", created_by, {})


@pytest.mark.parametrize(("check", "scopes", "allowed"), [
    ("create", {"items:write"}, True),
    ("create", {"items:read"}, False),
    ("read", {"items:read"}, True),
    ("read", {"items:write", "items:admin"}, False),
    ("update own", {"items:write"}, True),
    ("update own", {"items:read"}, False),
    ("update another's", {"items:write"}, False),
    ("update another's", {"items:write", "items:admin"}, True),
    ("update another's", {"items:admin"}, False),
    ("events", {"events:read"}, True),
    ("events", {"items:read", "items:write", "items:admin"}, False),
])
def test_scopes_and_ownership(
    authority: JwtAuthority, check: str, scopes: set[str], allowed: bool
) -> None:
    alice = Principal("alice", frozenset(scopes))
    calls: dict[str, Callable[[], str]] = {
        "create": lambda: authority.check_create_item(alice, {}),
        "read": lambda: authority.check_read_item(alice, _item("bob")),
        "update own": lambda: authority.check_update_item(alice, _item("alice"), _item("alice")),
        "update another's": lambda: authority.check_update_item(alice, _item("bob"),
                                                                _item("bob")),
        "events": lambda: authority.check_read_events(alice),
    }
    if allowed:
        assert calls[check]() == "alice"
    else:
        with pytest.raises(Forbidden) as refused:
            calls[check]()
        assert "scope" in str(refused.value)


# ---------------------------------------------------------------- key sources


def test_an_unknown_kid_rereads_the_file_at_most_once_per_cooldown(idp: Idp) -> None:
    now = [1000.0]
    keys = JwksFile(str(idp.jwks_file), cooldown=5, clock=lambda: now[0])
    authority = JwtAuthority(keys, RULES)
    newcomer = KeyPair.generate("RS256", kid="key-new")
    idp.publish([*idp.keys, newcomer])
    now[0] += 1  # within the cooldown since the first read: not read again
    assert "not in the key set" in refusal(authority, idp.token(key=newcomer))
    now[0] += 5
    assert authority.authenticate(idp.token(key=newcomer)).user_id == "alice"
    # The old keys stay valid (rotation), and a removed key goes at the next read.
    assert authority.authenticate(idp.token(key=idp.keys[0])).user_id == "alice"


def test_a_broken_file_on_reread_keeps_the_keys_read_before_for_the_grace_only(
    idp: Idp, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    keys = JwksFile(str(idp.jwks_file), cooldown=5, grace=15, clock=lambda: now[0])
    authority = JwtAuthority(keys, RULES)
    idp.jwks_file.write_text('{"keys": [{"kty": "RSA", "n": ')  # half-written
    now[0] += 60
    assert "not in the key set" in refusal(authority, idp.token(headers={"kid": "other"}))
    assert authority.authenticate(idp.token()).user_id == "alice"
    assert "keeping the 2 key(s) read before for up to 15s" in caplog.text
    assert keys.failure() is None
    now[0] += 10  # still unreadable, within the grace
    assert authority.authenticate(idp.token()).user_id == "alice"
    now[0] += 5  # the grace is over: it fails closed
    assert "not in the key set" in refusal(authority, idp.token())
    assert "is not JSON" in str(keys.failure()) and "for 15s" in str(keys.failure())
    assert "every token is refused" in caplog.text
    idp.publish(idp.keys)  # written whole at last
    now[0] += 5
    assert authority.authenticate(idp.token()).user_id == "alice"
    assert keys.failure() is None and "holds 2 key(s) again" in caplog.text


def test_a_file_rewritten_in_place_keeps_its_keys_across_the_moment_it_is_empty(
    idp: Idp
) -> None:
    now = [0.0]
    authority = JwtAuthority(JwksFile(str(idp.jwks_file), clock=lambda: now[0]), RULES)
    for moment in (b"", b'{"keys": [{"kty"'):  # truncated, then half-written
        idp.jwks_file.write_bytes(moment)
        now[0] += 5
        assert authority.authenticate(idp.token()).user_id == "alice"
    idp.jwks_file.write_bytes(idp.jwks(idp.keys))
    now[0] += 5
    assert authority.authenticate(idp.token(key=idp.keys[1])).user_id == "alice"


@pytest.mark.parametrize(("revoke", "says"), [
    (lambda path: path.write_text('{"keys": []}'), "is empty: it holds no key"),
    (lambda path: path.unlink(), "the file is gone"),
    (lambda path: path.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'),
     "holds no usable public key"),
    (lambda path: path.write_text("[]"), "is not a JSON Web Key Set"),
])
def test_emptying_or_removing_the_file_revokes_every_key_at_the_next_look(
    idp: Idp, caplog: pytest.LogCaptureFixture, revoke: Callable[[Path], object], says: str
) -> None:
    now = [0.0]
    keys = JwksFile(str(idp.jwks_file), cooldown=5, clock=lambda: now[0])
    authority = JwtAuthority(keys, RULES)
    assert authority.authenticate(idp.token()).user_id == "alice"
    assert scraped_keys() == 2
    revoke(idp.jwks_file)
    now[0] += 5
    for token in (idp.token(key=idp.keys[0]), idp.token(key=idp.keys[1]),
                  idp.token(headers={"kid": None})):
        assert "not in the key set" in refusal(authority, token)
    assert says in str(keys.failure())
    assert scraped_keys() == 0
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert says in error.getMessage() and "every token is refused" in error.getMessage()
    idp.publish(idp.keys[1:])  # a new key set: back, with its keys only
    now[0] += 5
    assert "not in the key set" in refusal(authority, idp.token(key=idp.keys[0]))
    assert authority.authenticate(idp.token(key=idp.keys[1])).user_id == "alice"
    assert keys.failure() is None and scraped_keys() == 1


def scraped_keys() -> float | None:
    """thelca_authority_keys{source="jwks-file"} as a scrape of /metrics reads it."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("thelca_authority_keys", {"source": "jwks-file"})


def test_a_pem_public_key_or_certificate_file(idp: Idp, tmp_path: Path) -> None:
    pem = tmp_path / "public.pem"
    pem.write_bytes(idp.keys[0].public_pem())
    authority = JwtAuthority(PemKey(str(pem), RULES.algorithms), RULES)
    assert authority.authenticate(idp.token(headers={"kid": "anything"})).user_id == "alice"
    assert "not accepted" in refusal(authority, hs256_with_public_key(idp.keys[0], idp.claims()))
    assert "does not match its key" in refusal(authority, idp.token(key=idp.keys[1]))
    ca = Ca.create(tmp_path / "ca")
    certificate = tmp_path / "certificate.pem"
    certificate.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    ec_authority = JwtAuthority(PemKey(str(certificate), RULES.algorithms), RULES)
    ca_signed = KeyPair(ca.key, "ES256", "ca").mint(idp.claims())
    assert ec_authority.authenticate(ca_signed).user_id == "alice"


# ---------------------------------------------------------------- a JWKS over https


@pytest.fixture
def https(tmp_path: Path) -> tuple[Ca, ssl.SSLContext, ssl.SSLContext]:
    """A CA, a server context for localhost, and a client context that trusts the CA."""
    ca = Ca.create(tmp_path / "https-ca")
    server = ca.server_context(ca.issue("localhost", server=True), require_client_cert=False)
    client = ssl.create_default_context(cafile=str(ca.cert_file))
    return ca, server, client


@pytest.fixture
def served(idp: Idp, https: tuple[Ca, ssl.SSLContext, ssl.SSLContext]) -> Iterator[JwksServer]:
    server = JwksServer(https[1], idp.jwks(idp.keys))
    server.start()
    yield server
    server.stop()


def test_a_jwks_url_is_fetched_once_and_refetched_for_a_new_kid_after_the_cooldown(
    idp: Idp, served: JwksServer, https: tuple[Ca, ssl.SSLContext, ssl.SSLContext]
) -> None:
    # The keys are made before the clock matters: making RSA keys on a loaded machine
    # once took longer than the cooldown, and the flood below then fetched again.
    newcomer = KeyPair.generate("ES256", kid="key-new")
    forged = [idp.token(key=KeyPair.generate("RS256", kid="forged")) for _ in range(5)]
    keys = JwksUrl(served.url, cooldown=2.0, ssl_context=https[2])
    authority = JwtAuthority(keys, RULES)
    for _ in range(3):
        assert authority.authenticate(idp.token()).user_id == "alice"
    assert served.fetches == 1
    served.body = idp.jwks([*idp.keys, newcomer])
    for token in forged:  # a flood of unknown kids within the cooldown: no fetch
        refusal(authority, token)
    assert served.fetches == 1
    time.sleep(2.1)
    assert authority.authenticate(idp.token(key=newcomer)).user_id == "alice"
    assert served.fetches == 2


def test_an_unreachable_jwks_url_is_the_authority_unavailable_not_a_401(
    idp: Idp, https: tuple[Ca, ssl.SSLContext, ssl.SSLContext]
) -> None:
    server = JwksServer(https[1], idp.jwks(idp.keys))
    server.start()
    url = server.url
    server.stop()  # nothing listens there now
    authority = JwtAuthority(JwksUrl(url, ssl_context=https[2]), RULES)
    token = idp.token()
    with pytest.raises(AuthorityUnavailable) as unavailable:
        authority.authenticate(token)
    assert "cannot be fetched" in str(unavailable.value)
    assert token not in str(unavailable.value)


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"[]", b'{"keys": []}'])
def test_a_jwks_url_that_serves_no_key_set_is_unavailable(
    idp: Idp, https: tuple[Ca, ssl.SSLContext, ssl.SSLContext], body: bytes
) -> None:
    server = JwksServer(https[1], body)
    server.start()
    try:
        with pytest.raises(AuthorityUnavailable):
            JwtAuthority(JwksUrl(server.url, ssl_context=https[2]), RULES).authenticate(
                idp.token())
    finally:
        server.stop()


def test_a_jwks_url_with_an_untrusted_certificate_is_unavailable(
    idp: Idp, served: JwksServer
) -> None:
    authority = JwtAuthority(JwksUrl(served.url), RULES)  # the system CAs do not know ours
    with pytest.raises(AuthorityUnavailable):
        authority.authenticate(idp.token())
    assert served.fetches == 0


def test_symmetric_keys_from_a_jwks_url_are_ignored(
    idp: Idp, https: tuple[Ca, ssl.SSLContext, ssl.SSLContext]
) -> None:
    # An oct key listed first under the RSA key's kid: were it kept, it would be the
    # key chosen for that kid and a good token would be refused.
    oct_key = {"kty": "oct", "kid": "key-rsa", "k": "c2VjcmV0"}
    body = json.dumps({"keys": [oct_key, idp.keys[0].public_jwk()]}).encode()
    with jwks_server(https[1], body) as server:
        authority = JwtAuthority(JwksUrl(server.url, ssl_context=https[2]), RULES)
        assert authority.authenticate(idp.token()).user_id == "alice"


def _without(jwk: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in jwk.items() if k not in names}


@pytest.mark.parametrize("what", ["no kid", "only use enc", "only oct", "empty", "not a set",
                                  "not json"])
def test_a_jwks_url_without_a_usable_signing_key_refuses_the_start(
    idp: Idp, https: tuple[Ca, ssl.SSLContext, ssl.SSLContext], what: str
) -> None:
    jwk = idp.keys[0].public_jwk()
    body = {
        "no kid": json.dumps({"keys": [_without(jwk, "kid")]}).encode(),
        "only use enc": json.dumps({"keys": [{**jwk, "use": "enc"}]}).encode(),
        "only oct": json.dumps({"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}).encode(),
        "empty": b'{"keys": []}',
        "not a set": b"[]",
        "not json": b"<html>oops</html>",
    }[what]
    with jwks_server(https[1], body) as server, pytest.raises(ConfigurationError) as refused:
        JwksUrl(server.url, ssl_context=https[2]).warm_up()
    assert f"THELCA_JWKS={server.url}" in str(refused.value)


def test_an_unreachable_jwks_url_at_start_is_logged_and_waited_for(
    idp: Idp, https: tuple[Ca, ssl.SSLContext, ssl.SSLContext], caplog: pytest.LogCaptureFixture
) -> None:
    with jwks_server(https[1], idp.jwks(idp.keys)) as server:
        url = server.url
    keys = JwksUrl(url, ssl_context=https[2])
    with caplog.at_level(logging.WARNING, logger="thelca.authority.jwt"):
        keys.warm_up()  # no ConfigurationError: the IdP may come back
    assert "cannot be fetched" in caplog.text


def test_a_good_jwks_url_warms_up(idp: Idp, served: JwksServer,
                                  https: tuple[Ca, ssl.SSLContext, ssl.SSLContext]) -> None:
    keys = JwksUrl(served.url, ssl_context=https[2])
    keys.warm_up()
    assert JwtAuthority(keys, RULES).authenticate(idp.token()).user_id == "alice"
    assert served.fetches == 1


# ---------------------------------------------------------------- settings


def _settings(**values: Any) -> Settings:
    return replace(Settings(authority="jwt"), **values)


@pytest.mark.parametrize(("values", "says"), [
    ({}, ["THELCA_JWKS", "THELCA_JWT_KEY_FILE", "dev-keys"]),
    ({"jwks": "/no/such/jwks.json"}, ["THELCA_JWKS=/no/such/jwks.json", "cannot be read"]),
    ({"jwks": "http://idp.example/jwks.json"}, ["THELCA_JWKS", "https"]),
    ({"jwt_key_file": "/no/such.pem"}, ["THELCA_JWT_KEY_FILE=/no/such.pem", "cannot be read"]),
    ({"jwks": "JWKS", "jwt_key_file": "PEM"}, ["both", "choose one"]),
    ({"jwks": "JWKS", "jwt_algorithms": "RS256,none"}, ["THELCA_JWT_ALGORITHMS", "none"]),
    ({"jwks": "JWKS", "jwt_algorithms": "HS256"}, ["THELCA_JWT_ALGORITHMS", "HS256",
                                                   "HMAC", "public key"]),
    ({"jwks": "JWKS", "jwt_algorithms": "RS256,HS512"}, ["HS512", "remove"]),
    ({"jwks": "JWKS", "jwt_algorithms": "RS257"}, ["'RS257' is not an algorithm"]),
    ({"jwks": "JWKS", "jwt_algorithms": " , "}, ["THELCA_JWT_ALGORITHMS is empty"]),
])
def test_misconfiguration_is_refused_naming_the_variable(
    idp: Idp, values: dict[str, Any], says: list[str]
) -> None:
    values = {k: str(idp.jwks_file) if v == "JWKS" else str(idp.directory / "x.pem")
              if v == "PEM" else v for k, v in values.items()}
    with pytest.raises(ConfigurationError) as refused:
        from_settings(_settings(**values))
    for words in says:
        assert words in str(refused.value)
    with pytest.raises(ConfigurationError):
        check_authority_choice(_settings(**values))  # so `thelca run` refuses too


@pytest.mark.parametrize(("content", "says"), [
    ("{not json", "is not JSON"),
    ('{"no": "keys"}', "is not a JSON Web Key Set"),
    ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no usable public key"),
    ('{"keys": [{"kty": "RSA", "n": "x"}]}', "no usable public key"),
])
def test_a_jwks_file_without_public_keys_is_refused(tmp_path: Path, content: str,
                                                   says: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError) as refused:
        from_settings(_settings(jwks=str(path)))
    assert says in str(refused.value)
    assert "THELCA_JWKS" in str(refused.value)


def test_symmetric_keys_in_a_jwks_file_are_ignored(idp: Idp, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    oct_key = {"kty": "oct", "kid": "key-rsa", "k": "c2VjcmV0"}
    path.write_text(json.dumps({"keys": [oct_key, idp.keys[0].public_jwk()]}))
    authority = from_settings(_settings(jwks=str(path)))
    assert authority.authenticate(idp.token()).user_id == "alice"


def test_a_private_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "private.pem"
    path.write_bytes(KeyPair.generate().private_pem())
    with pytest.raises(ConfigurationError) as refused:
        from_settings(_settings(jwt_key_file=str(path)))
    assert "private key" in str(refused.value)


def test_a_pem_key_that_fits_no_allowed_algorithm_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p384.pem"
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigurationError) as refused:
        from_settings(_settings(jwt_key_file=str(path)))
    assert "fits none of the algorithms" in str(refused.value)
    rsa_path = tmp_path / "rsa.pem"
    rsa_path.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert from_settings(_settings(jwt_key_file=str(rsa_path), jwt_algorithms="PS256"))


def test_the_flags_win_over_the_environment() -> None:
    from thelca.cli.main import build_parser

    args = build_parser().parse_args([
        "worker", "--jwks", "flag.json", "--jwt-algorithms", "ES256", "--jwt-issuer", "i",
        "--jwt-audience", "a", "--jwt-leeway", "0", "--jwt-key-file", "k.pem"])
    environ = {"THELCA_JWKS": "env.json", "THELCA_JWT_LEEWAY": "99",
               "THELCA_JWT_ISSUER": "env-issuer"}
    settings = Settings.resolve(args, environ)
    assert (settings.jwks, settings.jwt_algorithms, settings.jwt_issuer, settings.jwt_audience,
            settings.jwt_leeway, settings.jwt_key_file) == ("flag.json", "ES256", "i", "a", 0,
                                                            "k.pem")
    assert Settings.resolve(None, environ).jwt_leeway == 99
    assert Settings.resolve(None, {}).jwt_algorithms == "RS256,ES256"
    with pytest.raises(ConfigurationError):
        Settings.resolve(None, {"THELCA_JWT_LEEWAY": "-1"})


def test_the_worker_warns_when_iss_or_aud_is_unset(
    idp: Idp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    build_authority(_settings(jwks=str(idp.jwks_file)))
    assert "THELCA_JWT_ISSUER is unset" in caplog.text
    assert "THELCA_JWT_AUDIENCE is unset" in caplog.text
    caplog.clear()
    build_authority(_settings(jwks=str(idp.jwks_file), jwt_issuer="i", jwt_audience="a"))
    assert "unset" not in caplog.text


def test_a_retired_key_goes_once_the_file_changed_and_the_cooldown_passed(idp: Idp) -> None:
    now = [0.0]
    authority = JwtAuthority(JwksFile(str(idp.jwks_file), cooldown=5, clock=lambda: now[0]),
                             RULES)
    retired = idp.token(key=idp.keys[0])
    idp.publish(idp.keys[1:])
    assert authority.authenticate(retired).user_id == "alice"  # not looked at yet
    now[0] += 5
    assert "not in the key set" in refusal(authority, retired)
    assert authority.authenticate(idp.token(key=idp.keys[1])).user_id == "alice"


# ---------------------------------------------------------------- dev keys


@pytest.mark.parametrize("pem", [
    b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    b"garbage",
    b"",
])
def test_a_corrupt_dev_private_key_is_a_dev_keys_error(idp: Idp, tmp_path: Path,
                                                       pem: bytes) -> None:
    (tmp_path / "jwks.json").write_bytes(idp.jwks(idp.keys[:1]))
    (tmp_path / "private.pem").write_bytes(pem)
    with pytest.raises(DevKeysError) as refused:
        mint_from_directory(tmp_path, idp.claims())
    assert "private.pem" in str(refused.value)
    assert "thelca dev-keys" in str(refused.value)
