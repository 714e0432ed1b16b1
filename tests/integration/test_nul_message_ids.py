"""A message_id with NUL, through the real broker, to a worker on the real PostgreSQL.

PostgreSQL text cannot hold NUL, so the worker cannot record a command under such a
message_id: a command that would be recorded is refused with 400 before it is served,
and nothing else pays for it (no dead letter, no new database connection); a read,
which is not recorded, is served. tests/unit/test_command_role.py checks a whole
batch of them, and that SQLite records one.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.integration.conftest import delete_prefix, wait_for_consumers
from tests.integration.plain import PlainClient, watch
from thelca.bootstrap import build_worker
from thelca.roles.refusals import NUL_MESSAGE_ID
from thelca.settings import Settings
from thelca_client.contract import Names

pytestmark = [pytest.mark.broker, pytest.mark.postgres]


@pytest.fixture
def application_name() -> str:
    return f"thelca-nul-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pg_worker(amqp_url: str, prefix: str, pg_store_url: str, application_name: str
              ) -> Iterator[Names]:
    """The real worker in a thread, on a PostgreSQL schema of its own whose connections
    carry `application_name`."""
    settings = Settings(amqp_url=amqp_url, prefix=prefix, authority="test-only",
                        store=f"{pg_store_url}&application_name={application_name}")
    role = build_worker(settings)
    thread = threading.Thread(target=role.run, daemon=True)
    thread.start()
    try:
        wait_for_consumers(amqp_url, settings.names.commands, [])
        yield settings.names
    finally:
        role.stop()
        thread.join(timeout=30)
        delete_prefix(amqp_url, prefix)


def _backend_pids(url: str, application_name: str) -> set[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                            (application_name,)).fetchall()
    return {row[0] for row in rows}


def test_a_nul_message_id_is_a_400_for_a_write_and_served_for_a_read(
    amqp_url: str, pg_url: str, pg_worker: Names, application_name: str,
) -> None:
    client = PlainClient(amqp_url, pg_worker.prefix)
    try:
        channel, dead = watch(client, pg_worker.dead)
        item = client.send({"command": "create", "item": {"properties": {}}}).body["item"]
        pids = _backend_pids(pg_url, application_name)
        assert pids  # the worker's connection

        refused = client.send({"command": "create", "item": {"properties": {}}},
                              message_id="m\x00nul", correlation_id="c-create")
        assert refused.status == 400 and refused.body["error"] == NUL_MESSAGE_ID
        update = {"command": "update", "id": item["id"],
                  "item": {**item, "properties": {"n": 2}}}
        assert client.send(update, message_id="u\x00nul", correlation_id="c-update"
                           ).status == 400
        read = client.send({"command": "read", "id": item["id"]}, message_id="r\x00nul",
                           correlation_id="c-read")
        assert read.status == 200 and read.body["version"] == 1  # the update was refused
        assert client.send({"command": "create", "item": {"properties": {}}}).status == 200

        assert _backend_pids(pg_url, application_name) == pids  # no connection replaced
        # Nothing dead-lettered (a letter would have been published before the last
        # command was even handled; a second more for the broker to route it).
        for method, _, _ in channel.consume(dead, inactivity_timeout=1):
            assert method is None, "a command went to the dead letters"
            break
    finally:
        client.close()
