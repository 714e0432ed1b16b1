"""The errors thelca raises: one small tree, each with the status it answers."""

from __future__ import annotations


class ThelcaError(Exception):
    """Base class of every error thelca raises on purpose."""

    status = 500


class CommandRefused(ThelcaError):
    """Raised when a command is answered with a 4xx status; the message is the reply's error."""

    status = 400


class InvalidCommand(CommandRefused):
    """Raised when a command breaks a rule of the item model."""

    status = 400


class NotAuthenticated(CommandRefused):
    """Raised when the Authority does not accept the token."""

    status = 401


class Forbidden(CommandRefused):
    """Raised when the Authority refuses this user this command on this item."""

    status = 403


class ItemNotFound(CommandRefused):
    """Raised when a command names an item id that no item has."""

    status = 404


class Conflict(CommandRefused):
    """Raised when expected_version is stale or a message_id belongs to another user."""

    status = 409


class ConcurrentUpdate(ThelcaError):
    """Raised by a store when another writer changed the item since it was read."""


class StoreUnavailable(ThelcaError):
    """Raised when the store cannot be reached or written: the batch is retried, not refused."""


class AuthorityUnavailable(ThelcaError):
    """Raised when the Authority cannot be reached: the batch is retried."""


class StoreLocked(ThelcaError):
    """Raised when another process already writes to the same store."""


class BrokerUnavailable(ThelcaError):
    """Raised when no broker of the configured URLs answers, or it refuses the login."""


class ConfigurationError(ThelcaError):
    """Raised when settings are missing or contradict each other."""


class ChainBroken(ThelcaError):
    """Raised by restore when the log's hash chain is broken and that was not accepted."""

    def __init__(self, where: str, count: int) -> None:
        super().__init__(where)
        self.where = where  # the first break: file:line: what was seen
        self.count = count  # breaks seen before restore stopped (at least 1)
