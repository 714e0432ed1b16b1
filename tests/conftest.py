"""Fixtures for every test directory: the local PostgreSQL, one schema per test, and the
stores opened on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres import OpenStore, fresh_schema, postgres_url, with_schema
from thelca.stores.postgres import PostgresStore


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The test database (THELCA_TEST_POSTGRES_URL); fails, saying how to get one, if none."""
    return postgres_url()


@pytest.fixture
def pg_store_url(pg_url: str) -> Iterator[str]:
    """A PostgreSQL store URL with a schema of its own, dropped after the test."""
    with fresh_schema(pg_url) as schema:
        yield with_schema(pg_url, schema)


@pytest.fixture
def pg_stores(pg_store_url: str) -> Iterator[OpenStore]:
    """Opens PostgreSQL stores on the test's schema, a connection each (as separate workers
    have), with an application_name when given (for tests.postgres.terminate); all are
    closed after the test, before its schema is dropped."""
    opened: list[PostgresStore] = []

    def open_one(application_name: str | None = None) -> PostgresStore:
        url = pg_store_url
        if application_name is not None:
            url = f"{url}&application_name={application_name}"
        opened.append(PostgresStore(url))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def pg_store(pg_stores: OpenStore) -> PostgresStore:
    """A PostgreSQL store on the test's schema, closed after the test."""
    return pg_stores()
