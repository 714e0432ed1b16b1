"""thelca_client: publish commands to a thelca worker over RabbitMQ and read its replies."""

from thelca_client.client import Client
from thelca_client.commands import ItemPage, LinkPage, LinkReply
from thelca_client.contract import Names, Reply
from thelca_client.errors import (
    BadRequest,
    CommandFailed,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PublishFailed,
    ReplyTimeout,
    ServerError,
    ThelcaClientError,
    Unauthorized,
    error_for,
)
from thelca_client.tls import TlsFileError, TlsFiles

__all__ = [
    "BadRequest",
    "Client",
    "CommandFailed",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "ItemPage",
    "LinkPage",
    "LinkReply",
    "Names",
    "NotFound",
    "PayloadTooLarge",
    "PublishFailed",
    "Reply",
    "ReplyTimeout",
    "ServerError",
    "ThelcaClientError",
    "TlsFileError",
    "TlsFiles",
    "Unauthorized",
    "error_for",
]
