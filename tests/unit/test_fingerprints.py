"""What makes two deliveries the same message: the body's fingerprint and the id seed."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import pytest

from thelca.domain import model
from thelca.roles.fingerprints import canonical, fingerprint, id_seed

KEY = bytes(range(32))
BEARER = {"Authorization": "Bearer alice"}


@pytest.mark.parametrize("same", [
    b'{"command":"create","item":{"properties":{"a":1,"b":[1,2]}}}',
    b'{"item": {"properties": {"b": [1, 2], "a": 1}}, "command": "create"}',
    b'\n {\t"command" : "create" ,"item":{"properties":{"b":[ 1,2 ],"a":1}}}\r\n',
    # the same value, once decoded: an escaped letter, and a key given twice (last wins)
    b'{"command":"cre\\u0061te","item":{"properties":{"a":0,"b":[1,2],"a":1}}}',
])
def test_the_same_json_value_has_one_fingerprint_whatever_its_spelling(same: bytes) -> None:
    first = b'{"command":"create","item":{"properties":{"a":1,"b":[1,2]}}}'
    assert fingerprint(same) == fingerprint(first)
    assert canonical(same) == b"json\x00" + first


@pytest.mark.parametrize("other", [
    b'{"command":"create","item":{"properties":{"a":2,"b":[1,2]}}}',  # another value
    b'{"command":"create","item":{"properties":{"a":1,"b":[2,1]}}}',  # list order counts
    b'{"command":"create","item":{"properties":{"a":1.0,"b":[1,2]}}}',  # 1.0 is not 1
    b'{"command":"create","item":{"properties":{"a":"1","b":[1,2]}}}',
    b'{"command":"create","item":{"properties":{"A":1,"b":[1,2]}}}',
])
def test_another_json_value_has_another_fingerprint(other: bytes) -> None:
    assert fingerprint(other) != fingerprint(
        b'{"command":"create","item":{"properties":{"a":1,"b":[1,2]}}}')


def test_a_body_that_is_not_json_is_fingerprinted_by_its_bytes() -> None:
    assert canonical(b"not json") == b"raw\x00not json"
    assert fingerprint(b"not json") != fingerprint(b"not  json")
    assert canonical(b"\xff\xfe") == b"raw\x00\xff\xfe"
    # JSON too deep to encode again is kept as its bytes, not refused
    deep = b"[" * 300 + b"]" * 300
    assert canonical(deep) == b"raw\x00" + deep
    # the bytes of a string can never pass for the JSON value they spell
    assert canonical(b'"raw"') != canonical(b"raw")
    assert fingerprint(b"{}") == hashlib.sha256(b"json\x00{}").hexdigest()


def _seed(key: bytes = KEY, message_id: str = "m-1", body: bytes = b"{}",
          headers: dict[str, object] | None = None) -> str:
    return id_seed(key, message_id, fingerprint(body), BEARER if headers is None else headers)


def test_the_seed_is_the_same_only_for_the_same_message() -> None:
    first = _seed()
    assert _seed() == first
    assert _seed(body=b' { } ') == first  # the same JSON value
    assert _seed(message_id="m-2") != first
    assert _seed(body=b'{"a":1}') != first
    assert _seed(headers={"Authorization": "Bearer bob"}) != first
    assert _seed(headers={}) != first
    assert _seed(headers={"Authorization": b"Bearer alice"}) != first  # bytes as sent
    assert _seed(headers={"authorization": "Bearer alice"}) == first  # any case of the name
    assert _seed(headers={"Authorization": "Bearer alice", "x-other": 1}) == first
    assert _seed(key=bytes(32)) != first


def test_the_token_enters_the_seed_only_through_the_keyed_hash() -> None:
    """Knowing everything but the key, a reader of the log cannot test a token guess."""
    body_print = fingerprint(b"{}")
    seed = id_seed(KEY, "m-1", body_print, BEARER)
    expected = hmac.new(KEY, digestmod=hashlib.sha256)
    for part in (b"m-1", body_print.encode(), b"sBearer alice"):
        expected.update(len(part).to_bytes(8, "big") + part)
    assert seed == expected.hexdigest()
    assert "alice" not in seed


def test_length_prefixes_keep_the_parts_apart() -> None:
    assert id_seed(KEY, "ab", "c", {}) != id_seed(KEY, "a", "bc", {})


def test_event_and_item_ids_are_the_uuids_the_uuid_module_makes() -> None:
    """Event ids are uuid5 of the seed, kind and user; item ids random uuid4s."""
    for seed in ("a", "x" * 100, "é/123"):
        for user in (None, "alice", "ü"):
            name = f"{seed}\x1fitem created\x1f{user or ''}"
            assert model.event_id_for(model.Origin("c", seed), "item created", user) == \
                str(uuid.uuid5(model.EVENT_NAMESPACE, name))
    item_id = model.new_item_id()
    assert str(uuid.UUID(item_id)) == item_id and uuid.UUID(item_id).version == 4


def test_the_id_seed_is_the_hmac_of_the_length_prefixed_parts() -> None:
    """id_seed in one hmac.digest call: the same value as an HMAC fed part by part."""
    key, headers = b"k" * 32, {"Authorization": "Bearer t", "authorization": b"x"}
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in (b"m", b"f", b"bx", b"sBearer t"):
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    assert id_seed(key, "m", "f", headers) == mac.hexdigest()
