"""The three-node RabbitMQ cluster (tests/cluster.py) as a session fixture.

A test module that needs it registers this module as a plugin, so that the cluster
starts once per session however many modules use it:

    pytest_plugins = ["tests.integration.cluster_fixture"]

    def test_x(rabbit_cluster: RabbitCluster) -> None: ...

The nodes' ports are fixed (5673-5675), so one cluster runs per machine: a session
holds a lock on it while it runs, and the directory is fixed too, so that a session
killed before its teardown leaves nothing the next one does not clean up.
"""

from __future__ import annotations

import fcntl
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cluster import RabbitCluster

CLUSTER_DIR = Path(tempfile.gettempdir()) / "thelca-rabbit-cluster"
LOCK_WAIT = 240  # seconds to wait for another session's cluster to go away


@contextmanager
def _machine_lock(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session has held {path} for {LOCK_WAIT}s: "
                                "only one RabbitMQ test cluster can run per machine")
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """Three clustered nodes for the session; stopped and removed at its end, come what may."""
    with _machine_lock(CLUSTER_DIR.with_name(CLUSTER_DIR.name + ".lock")):
        cluster = RabbitCluster(CLUSTER_DIR)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
