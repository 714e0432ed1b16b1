"""A peer that accepts the connection but never speaks AMQP: ConnectionFailed, no pika error."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from thelca_client import Client, ConnectionFailed


def test_a_silent_peer_is_connection_failed_within_the_timeout() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # and never answer
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with Client(f"amqp://guest:guest@127.0.0.1:{port}/%2F", timeout=1.5) as client, \
                pytest.raises(ConnectionFailed) as failed:
            client.create({})
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()
    assert time.monotonic() - started < 10
    assert f"127.0.0.1:{port}" in str(failed.value)
