"""thelca_client: send commands to thelca over RabbitMQ, read its replies, follow its events."""

from thelca_client.async_client import AsyncClient
from thelca_client.client import Client
from thelca_client.contract import Event, Names, Reply
from thelca_client.errors import (
    AccessRefused,
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
from thelca_client.replies import ItemPage, ItemReply, LinkPage, LinkReply
from thelca_client.subscription import Subscription
from thelca_client.tls import TlsFileError, TlsFiles

__all__ = [
    "AccessRefused",
    "AsyncClient",
    "BadRequest",
    "Client",
    "CommandFailed",
    "Conflict",
    "ConnectionFailed",
    "Event",
    "Forbidden",
    "ItemPage",
    "ItemReply",
    "LinkPage",
    "LinkReply",
    "Names",
    "NotFound",
    "PayloadTooLarge",
    "PublishFailed",
    "Reply",
    "ReplyTimeout",
    "ServerError",
    "Subscription",
    "ThelcaClientError",
    "TlsFileError",
    "TlsFiles",
    "Unauthorized",
    "error_for",
]
