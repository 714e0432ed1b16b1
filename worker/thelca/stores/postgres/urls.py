"""The PostgreSQL store's URL: thelca's `schema` parameter, and a password kept out of logs."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

DEFAULT_SCHEMA = "thelca"


def split_schema(url: str) -> tuple[str, str]:
    """The libpq URL without thelca's own `schema` parameter, and that schema."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not schema:
        raise ValueError("the schema parameter of a PostgreSQL store URL is empty")
    # The other pieces are kept byte for byte: re-encoding them would turn %20 into +,
    # which libpq does not decode (options=-c%20statement_timeout%3D5000, a password).
    rest = "&".join(piece for piece in parts.query.split("&") if _key(piece) != "schema")
    return urlunsplit(parts._replace(query=rest)), schema


def redacted(url: str) -> str:
    """The URL fit for a log line: a password, in the user part or in any parameter whose
    name ends in `password` (password, sslpassword), is ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    credentials, at, host = netloc.rpartition("@")
    if at and ":" in credentials:
        netloc = f"{credentials.split(':', 1)[0]}:***@{host}"
    query = "&".join(f"{piece.partition('=')[0]}=***" if _key(piece).endswith("password")
                     else piece for piece in parts.query.split("&"))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _key(piece: str) -> str:
    """The parameter name of one `key=value` piece of a query string, decoded, lower case."""
    return unquote(piece.partition("=")[0]).lower()
