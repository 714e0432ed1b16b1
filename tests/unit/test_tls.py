"""amqps:// parameters carry a verifying SSL context with the CA and client certificate loaded.

There is no TLS listener on the local broker, so the contexts are proven here
by a real TLS handshake against an in-process server that trusts only the
throwaway CA and asks for a client certificate.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.pki import Ca, Issued
from thelca.amqp import connection_parameters as worker_parameters
from thelca.bootstrap import tls_files
from thelca.errors import ConfigurationError
from thelca.settings import Settings
from thelca_client import Client, TlsFileError, TlsFiles
from thelca_client.broker import connection_parameters as client_parameters

URL = "amqps://user:secret@localhost:5671/%2F"


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return Ca.create(tmp_path / "ca")


@pytest.fixture
def client_cert(ca: Ca) -> Issued:
    return ca.issue("thelca-worker", server=False)


def _both(url: str, files: TlsFiles | None) -> list[pika.URLParameters]:
    return [worker_parameters(url, tls=files)[0],
            client_parameters(url, tls=files)[0]]


def _handshake(ca: Ca, context: ssl.SSLContext) -> str | None:
    """Connect with `context` to a TLS server that wants a client certificate from our CA;
    the client certificate's common name as the server saw it, or None when refused."""
    server_context = ca.server_context(ca.issue("localhost", server=True),
                                       require_client_cert=True)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[str | None] = []

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with server_context.wrap_socket(connection, server_side=True) as tls:
                peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
                seen.append(str(peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value))
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            seen.append(None)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.recv(2)  # TLS 1.3 reports a refused client certificate only on reading
    except (ssl.SSLError, OSError):
        pass
    finally:
        thread.join(timeout=5)
        listener.close()
    return seen[0] if seen else None


def test_amqps_parameters_verify_the_broker_with_our_ca_and_present_our_certificate(
    ca: Ca, client_cert: Issued
) -> None:
    files = TlsFiles(str(ca.cert_file), str(client_cert.cert_file), str(client_cert.key_file))
    for parameters in _both(URL, files):
        options = parameters.ssl_options
        assert options is not None
        assert options.server_hostname == "localhost"
        context = options.context
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert [c["subject"] for c in context.get_ca_certs()] == [
            ((("commonName", "thelca test CA"),),)]  # only our CA, not the system's
        assert _handshake(ca, context) == "thelca-worker"


def test_without_a_client_certificate_the_server_refuses(ca: Ca) -> None:
    for parameters in _both(URL, TlsFiles(ca_file=str(ca.cert_file))):
        assert parameters.ssl_options is not None
        assert _handshake(ca, parameters.ssl_options.context) is None


def test_without_our_ca_the_broker_is_not_trusted(ca: Ca, client_cert: Issued) -> None:
    files = TlsFiles(cert_file=str(client_cert.cert_file), key_file=str(client_cert.key_file))
    for parameters in _both(URL, files):
        assert parameters.ssl_options is not None
        assert _handshake(ca, parameters.ssl_options.context) is None


def test_amqps_without_files_still_verifies_host_names_which_pika_alone_cannot() -> None:
    # pika's own amqps:// parameters have no server name: with the default
    # context's check_hostname, the handshake cannot even start.
    assert pika.URLParameters(URL).ssl_options.server_hostname is None  # type: ignore[union-attr]
    for parameters in _both(URL, None):
        assert parameters.ssl_options is not None
        assert parameters.ssl_options.server_hostname == "localhost"
        assert parameters.ssl_options.context.verify_mode == ssl.CERT_REQUIRED
        assert parameters.port == 5671


def test_amqp_urls_stay_plain_and_refuse_tls_files(ca: Ca) -> None:
    plain = "amqp://guest:guest@localhost:5672/%2F"
    for make in (worker_parameters, client_parameters):
        assert make(plain)[0].ssl_options is None
    for build in _builders():
        with pytest.raises(TlsFileError, match="use amqps://"):
            build(plain, TlsFiles(ca_file=str(ca.cert_file)))


def test_amqps_urls_with_their_own_ssl_options_refuse_tls_files(ca: Ca) -> None:
    own = f"{URL}?ssl_options=" + quote(repr({"ca_certs": str(ca.cert_file)}))
    for make in (worker_parameters, client_parameters):
        assert make(own)[0].ssl_options is not None  # pika's, from the URL
    for build in _builders():
        with pytest.raises(TlsFileError, match="ssl_options") as refused:
            build(own, TlsFiles(ca_file=str(ca.cert_file)))
        assert "secret" not in str(refused.value)


def _builders() -> list[Callable[[str, TlsFiles], object]]:
    return [lambda url, files: worker_parameters(url, tls=files),
            lambda url, files: client_parameters(url, tls=files),
            lambda url, files: Client(url, tls=files)]


def test_the_client_library_takes_the_files_as_an_option(ca: Ca, client_cert: Issued) -> None:
    files = TlsFiles(str(ca.cert_file), str(client_cert.cert_file), str(client_cert.key_file))
    client = Client(f"{URL},amqps://other-host/%2F", tls=files)
    hosts = [(p.host, p.ssl_options.server_hostname) for p in client._connection.parameters
             if p.ssl_options is not None]
    assert hosts == [("localhost", "localhost"), ("other-host", "other-host")]
    assert "secret" not in repr(client)


def _settings(**values: Any) -> Settings:
    return replace(Settings(amqp_url=URL), **values)


def test_the_settings_name_the_variable_of_a_bad_file(
    ca: Ca, client_cert: Issued, tmp_path: Path
) -> None:
    other = Ca.create(tmp_path / "other").issue("someone", server=False)
    cases = [
        (dict(amqp_ca_file="/no/ca.pem"), "THELCA_AMQP_CA_FILE", "cannot be read"),
        (dict(amqp_ca_file=str(client_cert.key_file)), "THELCA_AMQP_CA_FILE", "not a PEM"),
        (dict(amqp_cert_file="/no/cert.pem"), "THELCA_AMQP_CERT_FILE", "cannot be read"),
        (dict(amqp_key_file=str(client_cert.key_file)), "THELCA_AMQP_KEY_FILE",
         "needs its client certificate"),
        (dict(amqp_cert_file=str(client_cert.cert_file), amqp_key_file=str(other.key_file)),
         "THELCA_AMQP_CERT_FILE", "cannot be loaded together"),
        (dict(amqp_url="amqp://localhost/%2F", amqp_ca_file=str(ca.cert_file)),
         "THELCA_AMQP_URL", "use amqps://"),
    ]
    for values, variable, says in cases:
        with pytest.raises(ConfigurationError) as refused:
            tls_files(_settings(**values))
        assert variable in str(refused.value) and says in str(refused.value), values
        assert "secret" not in str(refused.value)
    good = dict(amqp_ca_file=str(ca.cert_file), amqp_cert_file=str(client_cert.cert_file),
                amqp_key_file=str(client_cert.key_file))
    assert tls_files(_settings(**good)) == TlsFiles(*good.values())
    assert tls_files(_settings()) is None


def test_every_tls_setting_has_a_flag_and_a_variable(ca: Ca) -> None:
    from thelca.cli.main import build_parser

    for command in (["worker"], ["logger"], ["health"], ["publish", "read", "--id", "x"],
                    ["dead", "list"]):
        args = build_parser().parse_args([*command, "--amqp-ca-file", "flag.pem"])
        settings = Settings.resolve(args, {"THELCA_AMQP_CA_FILE": "env.pem",
                                           "THELCA_AMQP_CERT_FILE": "c.pem",
                                           "THELCA_AMQP_KEY_FILE": "k.pem"})
        assert (settings.amqp_ca_file, settings.amqp_cert_file, settings.amqp_key_file) == (
            "flag.pem", "c.pem", "k.pem")
