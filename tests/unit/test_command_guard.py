"""A failure while one command's reply or event is built costs that command, never its batch.

The command role with a real MemoryStore and the test-only Authority, handed
messages as the plumbing hands them over.
"""

from __future__ import annotations

from typing import Any

import orjson

from thelca.authority import TestOnlyAuthority
from thelca.roles.commands import CommandRole
from thelca.roles.messages import Incoming, Outgoing
from thelca.stores.memory import MemoryStore
from thelca_client.contract import DEAD_REASON_HEADER, Names

NAMES = Names("guard")
CREATE = b'{"command": "create", "item": {"properties": {"type": "STORY"}}}'


def handler() -> CommandRole:
    return CommandRole(MemoryStore(), TestOnlyAuthority(), NAMES, max_body=1 << 20)


def replies(out: list[Outgoing]) -> dict[str, int]:
    return {str(m.correlation_id): orjson.loads(m.body)["status"] for m in out if not m.exchange}


def test_an_event_that_cannot_be_encoded_costs_its_command_a_500_and_the_batch_goes_on() -> None:
    # A message_id the plumbing failed to turn into text (bytes): the 401 path puts it
    # into an Access refused event, which cannot be encoded. That was issue 16's row 1,
    # and the whole batch was retried forever.
    not_text: Any = b"\xff\xfe-poison"
    broken = Incoming(CREATE, message_id=not_text, correlation_id="broken", reply_to="client")
    honest = Incoming(CREATE, message_id="honest", reply_to="client",
                      headers={"Authorization": "Bearer alice"})
    out = handler().handle([broken, honest])
    assert replies(out) == {"broken": 500, "honest": 200}
    (dead,) = [m for m in out if m.exchange == NAMES.dead]
    assert str(dead.headers and dead.headers[DEAD_REASON_HEADER]).startswith("exception")


def test_a_message_id_that_is_not_utf8_is_refused_first_and_not_remembered() -> None:
    role = handler()
    refused = Incoming(CREATE, message_id="\\xff-id", correlation_id="c", reply_to="client",
                       headers={"Authorization": "Bearer alice"},
                       unreadable={"message_id": "not UTF-8"})
    out = role.handle([refused])
    assert replies(out) == {"c": 400}
    assert b"the message_id property is not UTF-8" in out[0].body
    assert role.store.pending_outbox() == []  # no event, nothing written


def test_one_that_cannot_be_answered_goes_once_to_the_dead_letters_without_its_token() -> None:
    nowhere = Incoming(CREATE, message_id="m", reply_to="\\xff-queue",
                       headers={"Authorization": "Bearer alice"},
                       unreadable={"reply_to": "not UTF-8"})
    (dead,) = handler().handle([nowhere])
    assert dead.exchange == NAMES.dead
    assert dead.headers is not None and "Authorization" not in dead.headers
    assert dead.headers[DEAD_REASON_HEADER] == "refused: the reply_to property is not UTF-8"
