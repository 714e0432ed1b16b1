"""amqps:// end to end, through a TLS-terminating proxy in front of the local broker.

The local RabbitMQ has no TLS listener (and the tests must not reconfigure a
shared broker), so a proxy in this process speaks TLS on a port of its own —
with a throwaway CA's certificate for localhost, asking for a client
certificate from that CA — and forwards the plain AMQP bytes to the broker.
The worker, the logger and the client library all connect through it with
their CA file and client certificate. What this does not test is RabbitMQ's
own TLS listener and its certificate-to-user mapping (EXTERNAL auth).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.integration.conftest import run_system
from tests.pki import Ca
from thelca_client import Client, ConnectionFailed, TlsFiles

pytestmark = pytest.mark.broker


class TlsProxy:
    """TLS on 127.0.0.1:port, plain TCP to the broker; remembers each client's certificate."""

    def __init__(self, context: ssl.SSLContext, host: str, port: int) -> None:
        self.context = context
        self.target = (host, port)
        self.peers: list[str] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context),
            self._loop).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        subject = dict(pair[0] for pair in writer.get_extra_info("peercert")["subject"])
        self.peers.append(str(subject["commonName"]))
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@pytest.fixture
def pki(tmp_path: Path) -> Ca:
    return Ca.create(tmp_path / "pki")


@pytest.fixture
def proxy(amqp_url: str, pki: Ca) -> Iterator[TlsProxy]:
    broker = urlparse(amqp_url)
    context = pki.server_context(pki.issue("localhost", server=True), require_client_cert=True)
    running = TlsProxy(context, broker.hostname or "localhost", broker.port or 5672)
    running.start()
    yield running
    running.stop()


def test_worker_logger_and_client_work_over_amqps_with_a_client_certificate(
    amqp_url: str, prefix: str, tmp_path: Path, pki: Ca, proxy: TlsProxy
) -> None:
    broker = urlparse(amqp_url)
    url = f"amqps://{broker.username}:{broker.password}@localhost:{proxy.port}/%2F"
    process_cert = pki.issue("thelca-process", server=False)
    env = {"THELCA_AMQP_URL": url, "THELCA_AMQP_CA_FILE": str(pki.cert_file),
           "THELCA_AMQP_CERT_FILE": str(process_cert.cert_file),
           "THELCA_AMQP_KEY_FILE": str(process_cert.key_file)}
    client_cert = pki.issue("thelca-client", server=False)
    files = TlsFiles(str(pki.cert_file), str(client_cert.cert_file), str(client_cert.key_file))
    with run_system(amqp_url, prefix, tmp_path, **env) as system:
        with Client(url, prefix=prefix, token="abcd", tls=files) as client:
            created = client.create({"over": "tls"})
            assert created.status == 200
            assert client.read(str((created.item or {})["id"])).status == 200
        lines = system.wait_for_log(lambda ls: len(ls) >= 2)
        assert [line["type"] for line in lines] == ["Item created", "Item read"]
        assert sorted(set(proxy.peers)) == ["thelca-client", "thelca-process"]
        assert proxy.peers.count("thelca-process") >= 2  # the worker and the logger
        # Without a client certificate the proxy refuses the handshake.
        no_cert = TlsFiles(ca_file=str(pki.cert_file))
        with Client(url, prefix=prefix, token="abcd", tls=no_cert, timeout=3) as client, \
                pytest.raises(ConnectionFailed):
            client.create({})
        # And without our CA the client does not trust the proxy's certificate.
        with Client(url, prefix=prefix, token="abcd", timeout=3) as client, \
                pytest.raises(ConnectionFailed):
            client.create({})
