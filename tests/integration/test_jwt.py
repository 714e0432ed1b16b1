"""The jwt Authority in the running worker: forged tokens, scopes, ownership, rotation, leaks.

Real `thelca worker` and `thelca logger` subprocesses with THELCA_AUTHORITY=jwt
and a JWKS file, a client written with plain pika, and the event log on disk.
Every token sent is remembered, and the last test searches the event log and
the processes' output for each one and for each token's signature.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.idp import Idp, JwksServer, broken_tokens
from tests.integration.conftest import (
    JwtSystem,
    RunningSystem,
    run_prepared,
    run_system,
    system_env,
)
from tests.integration.plain import PlainClient, PlainReply
from tests.pki import Ca
from thelca.authority.jwt import REFETCH_COOLDOWN
from thelca.devkeys import KeyPair

pytestmark = pytest.mark.broker

# Built once at import so that each row is a test of its own; the tokens are made again
# with the running system's keys.
ROWS = tuple(broken_tokens(Idp(Path("unused"), [KeyPair.generate("RS256", kid="key-rsa"),
                                                KeyPair.generate("ES256", kid="key-ec")])))
CREATE: dict[str, Any] = {"command": "create", "item": {"properties": {"kind": "STORY"}}}


@pytest.fixture(scope="module")
def client(amqp_url: str, shared_jwt_system: JwtSystem) -> Iterator[PlainClient]:
    plain = PlainClient(amqp_url, shared_jwt_system.prefix)
    yield plain
    plain.close()


def send(system: JwtSystem, client: PlainClient, body: dict[str, Any], token: str,
         timeout: float = 10) -> tuple[PlainReply, str]:
    """Send one command with this token, remembered for the leak search."""
    system.sent_tokens.append(token)
    message_id = str(uuid.uuid4())
    return client.send(body, token=token, message_id=message_id, timeout=timeout), message_id


def refused_event(system: RunningSystem, message_id: str) -> dict[str, Any]:
    events = system.events_for(message_id)
    assert len(events) == 1, events
    assert events[0]["type"] == "Access refused"
    return events[0]


# ---------------------------------------------------------------- 401: each row of the table


@pytest.mark.parametrize("what", ROWS)
def test_a_broken_or_forged_token_is_401_and_audited_with_no_user(
    shared_jwt_system: JwtSystem, client: PlainClient, what: str
) -> None:
    token, reason = broken_tokens(shared_jwt_system.idp)[what]
    if what == "empty":
        reason = "the Bearer token is empty"  # the header is read before the Authority
    reply, message_id = send(shared_jwt_system, client, CREATE, token)
    assert reply.status == 401, reply.body
    assert reason in reply.body["error"]
    event = refused_event(shared_jwt_system, message_id)
    assert event["user"] is None
    assert event["value"] == {"command": "create", "status": 401}


def test_no_authorization_header_is_401_and_audited(
    shared_jwt_system: JwtSystem, client: PlainClient
) -> None:
    message_id = str(uuid.uuid4())
    reply = client.send(CREATE, token=None, message_id=message_id)
    assert reply.status == 401 and "no Authorization header" in reply.body["error"]
    assert refused_event(shared_jwt_system, message_id)["user"] is None


# ---------------------------------------------------------------- 403: scopes and ownership


def test_scope_and_ownership_rules_are_403_and_audited_with_the_sub(
    shared_jwt_system: JwtSystem, client: PlainClient
) -> None:
    idp = shared_jwt_system.idp
    created, _ = send(shared_jwt_system, client, CREATE, idp.token("bob", "items:write"))
    assert created.status == 200 and created.body["item"]["created_by"] == "bob"
    item = created.body["item"]
    update = {"command": "update", "id": item["id"],
              "item": {**item, "properties": {"kind": "BUG"}}}
    read = {"command": "read", "id": item["id"]}
    rows = [
        ("create without items:write", "carol", "items:read", CREATE, "items:write scope"),
        ("read without items:read", "carol", "items:write", read, "items:read scope"),
        ("update own item without items:write", "bob", "items:read", update,
         "items:write scope"),
        ("update another's item without items:admin", "carol", "items:read items:write",
         update, "items:admin"),
        ("items:admin without items:write", "dave", "items:admin", update,
         "items:write scope"),
    ]
    for what, sub, scope, body, reason in rows:
        reply, message_id = send(shared_jwt_system, client, body, idp.token(sub, scope))
        assert reply.status == 403, (what, reply.body)
        assert reason in reply.body["error"], what
        event = refused_event(shared_jwt_system, message_id)
        assert event["user"] == sub, what
        expected = {"command": body["command"], "status": 403}
        if "id" in body:
            expected["id"] = item["id"]
        assert event["value"] == expected, what
    # And what the rules allow: read, the owner's update, an admin's update.
    allowed = [("carol", "items:read", read), ("bob", "items:write", update),
               ("dave", "items:write items:admin",
                {**update, "item": {**item, "properties": {"kind": "EPIC"}}})]
    for sub, scope, body in allowed:
        reply, message_id = send(shared_jwt_system, client, body, idp.token(sub, scope))
        assert reply.status == 200, (sub, reply.body)
        assert shared_jwt_system.events_for(message_id)[0]["user"] == sub
    assert reply.body["item"]["created_by"] == "bob" and reply.body["version"] == 3


def test_the_user_id_is_the_sub_and_tokens_of_both_keys_work(
    shared_jwt_system: JwtSystem, client: PlainClient
) -> None:
    idp = shared_jwt_system.idp
    for key in idp.keys:
        reply, message_id = send(shared_jwt_system, client, CREATE,
                                 idp.token("erin@example.com", key=key))
        assert reply.status == 200
        assert reply.body["item"]["created_by"] == "erin@example.com"
        assert shared_jwt_system.events_for(message_id)[0]["user"] == "erin@example.com"


def test_no_token_nor_any_signature_is_in_the_event_log_or_the_output(
    shared_jwt_system: JwtSystem, client: PlainClient
) -> None:
    # Runs last in this module; sends one of each kind itself so that it also stands alone.
    idp = shared_jwt_system.idp
    for token, _ in broken_tokens(idp).values():
        send(shared_jwt_system, client, CREATE, token)
    reply, message_id = send(shared_jwt_system, client, CREATE, idp.token())
    assert reply.status == 200
    shared_jwt_system.events_for(message_id)
    assert_no_token_leaked(shared_jwt_system)


def assert_no_token_leaked(system: JwtSystem) -> None:
    """Neither a token nor its signature (nor its payload) in the event log or the output."""
    time.sleep(0.5)  # the logger's last batch
    haystack = system.event_log.read_text() + system.output()
    assert "Access refused" in haystack
    parts = []
    for token in system.sent_tokens:
        segments = token.split(".")
        parts += [token] + (segments[1:] if len(segments) == 3 else [])
    searched = [p for p in parts if len(p) >= 16]  # short parts ("b", "c") match by chance
    assert len(searched) >= len(system.sent_tokens)
    leaked = [p[:12] + "..." for p in searched if p in haystack]
    assert not leaked, f"found in the log or the output: {leaked}"


# ---------------------------------------------------------------- key rotation


def test_key_rotation_a_new_kid_is_picked_up_and_a_retired_key_goes(
    jwt_system: JwtSystem, amqp_url: str
) -> None:
    idp = jwt_system.idp
    client = PlainClient(amqp_url, jwt_system.prefix)
    try:
        for key in idp.keys:  # two keys in the set: tokens of both accepted
            assert send(jwt_system, client, CREATE, idp.token(key=key))[0].status == 200
        newcomer = KeyPair.generate("ES256", kid="key-added-later")
        reply, _ = send(jwt_system, client, CREATE, idp.token(key=newcomer))
        assert reply.status == 401 and "not in the key set" in reply.body["error"]
        idp.publish([*idp.keys, newcomer])
        assert _eventually(jwt_system, client, idp.token(key=newcomer), 200)
        assert send(jwt_system, client, CREATE, idp.token(key=idp.keys[0]))[0].status == 200
        idp.publish([idp.keys[1], newcomer])  # retire the RSA key
        assert _eventually(jwt_system, client, idp.token(key=idp.keys[0]), 401)
        assert send(jwt_system, client, CREATE, idp.token(key=newcomer))[0].status == 200
        assert "read " in jwt_system.output() and "again: 3 key(s)" in jwt_system.output()
        assert_no_token_leaked(jwt_system)
    finally:
        client.close()


# ---------------------------------------------------------------- revoking by removing


@pytest.fixture
def watched_jwt_system(
    amqp_url: str, prefix: str, tmp_path: Path
) -> Iterator[tuple[JwtSystem, int]]:
    """A jwt system whose worker serves /metrics on a port of its own."""
    port = free_port()
    idp = Idp.create(tmp_path / "idp")
    running = JwtSystem(amqp_url, prefix, tmp_path,
                        system_env(amqp_url, prefix, tmp_path, **idp.env()), idp=idp,
                        role_env={"worker": {"THELCA_METRICS_PORT": str(port)}})
    systems = run_prepared(running)
    yield next(systems), port
    next(systems, None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def keys_in_force(port: int) -> float | None:
    """thelca_authority_keys{source="jwks-file"} as the worker's /metrics says now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for family in text_string_to_metric_families(response.read().decode()):
            for sample in family.samples:
                if sample.name == "thelca_authority_keys" and \
                        sample.labels == {"source": "jwks-file"}:
                    return float(sample.value)
    return None


def test_emptying_or_deleting_the_key_set_file_revokes_its_keys_within_5_seconds(
    watched_jwt_system: tuple[JwtSystem, int], amqp_url: str
) -> None:
    system, port = watched_jwt_system
    idp = system.idp
    client = PlainClient(amqp_url, system.prefix)
    health = ["health"]
    try:
        assert send(system, client, CREATE, idp.token())[0].status == 200
        assert keys_in_force(port) == 2
        well = thelca(*health, cwd=system.directory, env=system.env)
        assert well.returncode == 0, well.stdout
        assert f"authority: ok (jwt, keys from THELCA_JWKS file {idp.jwks_file})" in well.stdout
        for revoke, says in (
            (lambda: idp.jwks_file.write_text('{"keys": []}'),
             f"the key set file THELCA_JWKS={idp.jwks_file} is empty: it holds no key"),
            (idp.jwks_file.unlink,
             f"THELCA_JWKS={idp.jwks_file} cannot be read (the file is gone)"),
        ):
            revoke()
            revoked_at = time.monotonic()
            time.sleep(REFETCH_COOLDOWN + 0.5)  # the longest a look can wait
            for key in idp.keys:  # the first token after 5 s is refused, whatever its key
                reply, _ = send(system, client, CREATE, idp.token(key=key))
                assert reply.status == 401, reply.body
                assert "not in the key set" in reply.body["error"]
            print(f"{says}: 401 from {time.monotonic() - revoked_at:.1f}s after")
            assert keys_in_force(port) == 0
            sick = thelca(*health, cwd=system.directory, env=system.env)
            assert sick.returncode == 3, sick.stdout
            assert f"authority: FAILED ({says})" in sick.stdout
            replay = thelca(*health, "--role", "replay", cwd=system.directory, env=system.env)
            assert replay.returncode == 3 and f"authority: FAILED ({says})" in replay.stdout
            idp.publish(idp.keys)  # a new key set: tokens are verified again
            assert _eventually(system, client, idp.token(), 200)
            assert keys_in_force(port) == 2
        output = system.output()
        assert output.count("every token is refused (401)") == 2
        assert "ERROR thelca.authority.jwt.keys: jwt: the key set file" in output
        assert "holds 2 key(s) again" in output
        assert_no_token_leaked(system)
    finally:
        client.close()


def test_a_key_set_file_being_rewritten_does_not_revoke_its_keys(
    jwt_system: JwtSystem, amqp_url: str
) -> None:
    idp = jwt_system.idp
    client = PlainClient(amqp_url, jwt_system.prefix)
    try:
        assert send(jwt_system, client, CREATE, idp.token())[0].status == 200
        for moment in (b"", b'{"keys": [{"kty": "RSA", "kid": "key-rsa", "n": "'):
            with open(idp.jwks_file, "wb") as rewritten:  # in place: truncated, half-written
                rewritten.write(moment)
            time.sleep(REFETCH_COOLDOWN + 0.5)  # looked at: unreadable, within the grace
            assert send(jwt_system, client, CREATE, idp.token())[0].status == 200
            idp.jwks_file.write_bytes(idp.jwks(idp.keys))
        assert send(jwt_system, client, CREATE, idp.token(key=idp.keys[1]))[0].status == 200
        output = jwt_system.output()
        assert "keeping the 2 key(s) read before for up to 15s" in output
        assert "every token is refused" not in output
    finally:
        client.close()


def _eventually(system: JwtSystem, client: PlainClient, token: str, status: int) -> bool:
    """The status comes within the refetch cooldown (5 s) and a margin."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if send(system, client, CREATE, token)[0].status == status:
            return True
        time.sleep(0.5)
    return False


# ---------------------------------------------------------------- the key set URL is down


def test_an_unreachable_jwks_url_retries_the_command_instead_of_refusing_it(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    idp = Idp.create(tmp_path / "idp")
    ca = Ca.create(tmp_path / "ca")
    context = ca.server_context(ca.issue("localhost", server=True), require_client_cert=False)
    server = JwksServer(context, idp.jwks(idp.keys))
    server.start()
    server.stop()  # keep its port, and let nothing answer there yet
    env = {**idp.env(), "THELCA_JWKS": server.url, "SSL_CERT_FILE": str(ca.cert_file)}
    token = idp.token()
    with run_system(amqp_url, prefix, tmp_path, **env) as system:
        client = PlainClient(amqp_url, prefix)
        try:
            message_id = str(uuid.uuid4())
            with pytest.raises(TimeoutError):
                client.send(CREATE, token=token, message_id=message_id, timeout=3)
            server.start()
            reply = _late_reply(client, message_id, timeout=45)
        finally:
            client.close()
            server.stop()
        assert reply.status == 200, reply.body
        events = system.events_for(message_id)
        assert [e["type"] for e in events] == ["Item created"]  # never an Access refused
        output = system.output()
        assert "cannot be fetched" in output and token not in output
        assert token.split(".")[2] not in output + system.event_log.read_text()


def _late_reply(client: PlainClient, message_id: str, timeout: float) -> PlainReply:
    deadline = time.monotonic() + timeout
    while message_id not in client._replies:
        assert time.monotonic() < deadline, "no reply after the key set came back"
        client.connection.process_data_events(time_limit=0.2)
    return client._replies.pop(message_id)


# ---------------------------------------------------------------- the README's two commands


def thelca(*args: str, cwd: Path, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thelca", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_dev_keys_and_dev_token_run_the_jwt_mode_end_to_end(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    made = thelca("dev-keys", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    keys = tmp_path / "thelca-dev-keys"
    assert (keys / "private.pem").stat().st_mode & 0o777 == 0o600
    assert "PRIVATE" not in made.stdout
    assert thelca("dev-keys", cwd=tmp_path).returncode == 2  # never overwrites a key
    minted = thelca("dev-token", "--sub", "alice", "--scope", "items:read items:write",
                    cwd=tmp_path)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert minted.stdout == token + "\n" and token.count(".") == 2  # only the token
    reader = thelca("dev-token", "--sub", "bob", "--scope", "items:read", "--ttl", "60",
                    cwd=tmp_path).stdout.strip()
    env = {"THELCA_AUTHORITY": "jwt", "THELCA_JWKS": str(keys / "jwks.json")}
    with run_system(amqp_url, prefix, tmp_path, **env) as system:
        publish_env = system_env(amqp_url, prefix, tmp_path)
        created = thelca("publish", "create", "--token", token, "--properties",
                         '{"type": "STORY"}', cwd=tmp_path, env=publish_env)
        assert created.returncode == 0, created.stdout + created.stderr
        assert '"created_by": "alice"' in created.stdout
        refused = thelca("publish", "create", "--token", reader, cwd=tmp_path, env=publish_env)
        assert refused.returncode == 1 and '"status": 403' in refused.stdout
        output = system.output()
        assert "THELCA_JWT_ISSUER is unset" in output and "THELCA_JWT_AUDIENCE is unset" in output
        for secret in (token, reader, token.split(".")[2], reader.split(".")[2]):
            assert secret not in output + system.event_log.read_text()


@pytest.mark.parametrize(("env", "says"), [
    ({}, "THELCA_JWKS"),
    ({"THELCA_JWKS": "/no/such/jwks.json"}, "THELCA_JWKS=/no/such/jwks.json cannot be read"),
    ({"THELCA_JWT_KEY_FILE": "/no/such.pem"}, "THELCA_JWT_KEY_FILE=/no/such.pem"),
    ({"THELCA_JWKS": "x", "THELCA_JWT_ALGORITHMS": "HS256"}, "THELCA_JWT_ALGORITHMS"),
])
@pytest.mark.parametrize("role", ["worker", "run"])
def test_a_misconfigured_jwt_worker_refuses_to_start_naming_the_variable(
    amqp_url: str, prefix: str, tmp_path: Path, env: dict[str, str], says: str, role: str
) -> None:
    environ = system_env(amqp_url, prefix, tmp_path, THELCA_AUTHORITY="jwt", **env)
    done = thelca(role, cwd=tmp_path, env=environ, timeout=30)
    assert done.returncode == 3, done.stderr
    assert says in done.stderr


def test_the_ssl_cert_file_variable_is_what_lets_the_worker_trust_a_private_ca() -> None:
    # The test above relies on it: OpenSSL's default verify paths honour SSL_CERT_FILE.
    assert ssl.get_default_verify_paths().openssl_cafile_env == "SSL_CERT_FILE"
