"""Fixtures for every test directory: the local PostgreSQL, one schema per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres import fresh_schema, postgres_url, with_schema


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The test database (THELCA_TEST_POSTGRES_URL); fails, saying how to get one, if none."""
    return postgres_url()


@pytest.fixture
def pg_store_url(pg_url: str) -> Iterator[str]:
    """A PostgreSQL store URL with a schema of its own, dropped after the test."""
    with fresh_schema(pg_url) as schema:
        yield with_schema(pg_url, schema)
