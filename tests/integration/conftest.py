"""Broker selection for the integration tests.

THELCA_TEST_AMQP_URL, else a broker on localhost:5672, else a RabbitMQ in a
testcontainers container when Docker answers; if none of these works the
tests fail (never skip) with a message saying how to get a broker.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pika
import pytest

LOCAL_URL = "amqp://guest:guest@localhost:5672/%2F"
HOW_TO_GET_A_BROKER = (
    "no RabbitMQ answered. Start one with `rabbitmq-server -detached` (Debian package "
    "rabbitmq-server), or `docker run -d -p 5672:5672 rabbitmq:3-management`, or set "
    "THELCA_TEST_AMQP_URL=amqp://user:pass@host:5672/%2F; with Docker running, the tests "
    "start a container themselves."
)


def _answers(url: str) -> bool:
    try:
        params = pika.URLParameters(url)
        params.connection_attempts = 1
        params.socket_timeout = 3
        pika.BlockingConnection(params).close()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    configured = os.environ.get("THELCA_TEST_AMQP_URL")
    if configured:
        if not _answers(configured):
            pytest.fail(f"THELCA_TEST_AMQP_URL does not answer: {HOW_TO_GET_A_BROKER}")
        yield configured
        return
    if _answers(LOCAL_URL):
        yield LOCAL_URL
        return
    yield from _container_url()


def _container_url() -> Iterator[str]:
    try:
        from testcontainers.rabbitmq import RabbitMqContainer

        container = RabbitMqContainer("rabbitmq:3.13-management")
        container.start()
    except Exception as error:
        pytest.fail(f"{HOW_TO_GET_A_BROKER} (Docker: {type(error).__name__}: {error})")
    try:
        params = container.get_connection_params()
        yield (
            f"amqp://guest:guest@{params.host}:{params.port}/%2F"
        )
    finally:
        container.stop()


@pytest.fixture
def prefix() -> str:
    """A prefix of its own for every test, so that runs never collide."""
    return f"test-{uuid.uuid4().hex[:10]}"
