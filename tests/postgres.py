"""The local PostgreSQL for the tests: its URL, and a schema of its own per test.

THELCA_TEST_POSTGRES_URL, else postgresql://postgres@127.0.0.1:5432/test (the
trust authentication of the machines here). When it does not answer, the
tests that need it fail with a message saying how to get one; they never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from thelca.stores.postgres import PostgresStore

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
HOW_TO_GET_POSTGRES = (
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "(Debian's postgresql package; `bash .ci/run` does this), or "
    "`docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test "
    "postgres:16`, or set THELCA_TEST_POSTGRES_URL=postgresql://user@host:5432/db to one "
    "whose user may create schemas"
)


def postgres_url() -> str:
    """The test database's URL; fails the test, saying how to get one, when it does not answer."""
    url = os.environ.get("THELCA_TEST_POSTGRES_URL") or DEFAULT_URL
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as error:
        pytest.fail(f"no PostgreSQL answered at {url} ({str(error).strip()}): "
                    f"{HOW_TO_GET_POSTGRES}", pytrace=False)
    return url


def with_schema(url: str, schema: str, **parameters: str) -> str:
    """The store URL for `schema`, with any further libpq parameters."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("schema", schema), *parameters.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A schema name nobody uses; the schema (if a store made it) is dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))


class OpenStore(Protocol):
    """The pg_stores fixture: opens a store on the test's schema, closed after the test."""

    def __call__(self, application_name: str | None = None) -> PostgresStore: ...


def connection_name() -> str:
    """An application_name of the test's own, for terminate() to find its connection by."""
    return f"thelca-test-{uuid.uuid4().hex[:8]}"


def terminate(url: str, application_name: str) -> int:
    """Have the server kill the connections of that application_name; return how many."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()", (application_name,),
        ).fetchall()
    return len(rows)
