"""The errors thelca raises: one small tree, each with the status it answers.

    ThelcaError
    ├── CommandRefused (4xx): InvalidCommand, NotAuthenticated, Forbidden,
    │                         ItemNotFound, Conflict
    ├── StoreError: StoreUnavailable, ConcurrentUpdate, UnstorableValue, StoreLocked
    ├── AuthorityUnavailable
    ├── BrokerUnavailable
    ├── QueueMissing
    ├── ConfigurationError
    ├── ChainBroken (restore: the log's hash chain is broken)
    └── (thelca.amqp.dead.DeadLettersUnavailable, beside the retry results it carries)

Each store translates its driver's errors into the StoreError family in one
place (stores/sqlite/rows.py, stores/postgres/rows.py), so that nothing above the
stores sees sqlite3 or psycopg; a store never raises a CommandRefused.
"""

from __future__ import annotations


class ThelcaError(Exception):
    """Raised only as one of its subclasses: the base of every error thelca raises on purpose."""

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
    """Raised when the Authority refuses this user this command on this item, or a replay."""

    status = 403


class ItemNotFound(CommandRefused):
    """Raised when a command names an item id that no item has."""

    status = 404


class Conflict(CommandRefused):
    """Raised when a command's expected_version is not the current version."""

    status = 409


class StoreError(ThelcaError):
    """Raised when a store fails in a way no subclass names: that command is answered 500."""


class ConcurrentUpdate(StoreError):
    """Raised when another writer changed or added the row first: the command runs again."""


class StoreUnavailable(StoreError):
    """Raised when the store cannot be reached or written: the batch is retried, not refused."""


class UnstorableValue(StoreError):
    """Raised when a store cannot keep a value (PostgreSQL text, NUL): that command fails."""


class StoreLocked(StoreError):
    """Raised when another process already writes to the same store."""


class AuthorityUnavailable(ThelcaError):
    """Raised when the Authority cannot be reached: the batch is retried."""


class BrokerUnavailable(ThelcaError):
    """Raised when no broker of the configured URLs answers, or it refuses the login."""


class QueueMissing(ThelcaError):
    """Raised when a queue asked about does not exist: a wrong prefix, or nothing declared it."""


class ConfigurationError(ThelcaError):
    """Raised when settings are missing or contradict each other."""


class ChainBroken(ThelcaError):
    """Raised by restore when the log's hash chain is broken and that was not accepted."""

    def __init__(self, where: str, count: int) -> None:
        super().__init__(where)
        self.where = where  # the first break: file:line: what was seen
        self.count = count  # breaks seen (at least 1; in line, those before restore stopped)
