"""TLS for amqps:// URLs: which CAs to trust, and an optional client certificate.

pika's own amqps:// parameters carry a verifying context but no server name,
so the handshake fails ("check_hostname requires server_hostname"); here every
amqps:// URL gets a context that verifies the broker's certificate and its
host name, with the CA file and client certificate loaded when given.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

import pika


class TlsFileError(ValueError):
    """Raised when a TLS file cannot be read or loaded; `field` says which one."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files an amqps:// connection trusts and presents; no CA file: the system's CAs."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def given(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file))


def ssl_context(files: TlsFiles | None) -> ssl.SSLContext:
    """A client context that verifies the broker's certificate chain and host name."""
    files = files or TlsFiles()
    for field in ("ca_file", "cert_file", "key_file"):
        _readable(field, getattr(files, field))
    if files.key_file and not files.cert_file:
        raise TlsFileError("key_file", "a client key needs its client certificate as well")
    try:
        context = ssl.create_default_context(cafile=files.ca_file)
    except ssl.SSLError as error:
        raise TlsFileError("ca_file", f"not a PEM file of CA certificates ({error.reason})") \
            from None
    if files.cert_file:
        try:
            context.load_cert_chain(files.cert_file, files.key_file)
        except ssl.SSLError as error:
            raise TlsFileError("cert_file", "the client certificate and its key cannot be "
                               f"loaded together ({error.reason})") from None
    return context


def apply_tls(parameters: pika.URLParameters, url: str, files: TlsFiles | None) -> None:
    """Give an amqps:// URL's parameters our context; refuse TLS files for an amqp:// URL.

    An explicit `ssl_options` query argument in the URL is left as it is, and TLS
    files given with it are refused: they would go unused.
    """
    scheme = urlparse(url).scheme.lower()
    if scheme != "amqps":
        if files is not None and files.given:
            raise TlsFileError("url", f"TLS files are given but the broker URL for "
                               f"{parameters.host} is {scheme}://, which is not encrypted: "
                               "use amqps://")
        return
    if "ssl_options" in parse_qs(urlparse(url).query):
        if files is not None and files.given:
            raise TlsFileError("url", f"TLS files are given but the broker URL for "
                               f"{parameters.host} sets its own ssl_options, which would "
                               "leave them unused: give one or the other")
        return
    parameters.ssl_options = pika.SSLOptions(ssl_context(files),
                                             server_hostname=parameters.host)


def _readable(field: str, path: str | None) -> None:
    if not path:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise TlsFileError(field, f"{path} cannot be read ({error.strerror})") from None
