"""The errors a thelca client raises. None of their messages ever holds a token."""

from __future__ import annotations

from thelca_client.contract import Reply


class ThelcaClientError(Exception):
    """Raised when a call to thelca fails; the base of every error of this client."""


class CommandFailed(ThelcaClientError):
    """Raised when thelca answers a command with a status other than 200."""

    title = "Failed"

    def __init__(self, reply: Reply, *, message_id: str | None = None) -> None:
        self.reply = reply
        self.status: int = reply.status
        self.error: str = reply.error or ""
        self.message_id = message_id
        super().__init__(f"{self.status} {self.title}: {self.error or '(no error given)'}")


class BadRequest(CommandFailed):
    """Raised when thelca refuses a command that does not follow the contract (400)."""

    title = "Bad Request"


class Unauthorized(CommandFailed):
    """Raised when the token is missing or rejected (401)."""

    title = "Unauthorized"


class Forbidden(CommandFailed):
    """Raised when the token is valid but may not run this command on this item (403)."""

    title = "Forbidden"


class NotFound(CommandFailed):
    """Raised when no item has the id of a read or update (404)."""

    title = "Not Found"


class Conflict(CommandFailed):
    """Raised when expected_version is stale or the message_id belongs to another user (409)."""

    title = "Conflict"


class PayloadTooLarge(CommandFailed):
    """Raised when the command body is larger than the worker's limit (413)."""

    title = "Payload Too Large"


class ServerError(CommandFailed):
    """Raised when thelca fails unexpectedly (500) or answers with a status it never uses."""

    title = "Server Error"


_BY_STATUS: dict[int, type[CommandFailed]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    500: ServerError,
}


def error_for(reply: Reply, *, message_id: str | None = None) -> CommandFailed:
    """The CommandFailed subclass that matches the reply's status."""
    if reply.ok:
        raise ValueError("a 200 reply is not a failure")
    return _BY_STATUS.get(reply.status, ServerError)(reply, message_id=message_id)


class ReplyTimeout(ThelcaClientError):
    """Raised when no reply arrives within the timeout; retry with the same message_id."""

    def __init__(self, message_id: str, timeout: float) -> None:
        self.message_id = message_id
        self.timeout = timeout
        super().__init__(
            f"no reply to message {message_id} within {timeout:g} s; the command may still "
            "be processed: retry with the same message_id to get its reply without doing it twice"
        )


class PublishFailed(ThelcaClientError):
    """Raised when the broker refuses a command or has no queue to route it to."""

    def __init__(self, reason: str, *, message_id: str) -> None:
        self.message_id = message_id
        super().__init__(f"message {message_id} was not accepted: {reason}")


class ConnectionFailed(ThelcaClientError):
    """Raised when no broker answered within the timeout, or the connection kept failing.

    `sent` says whether the command was published on a connection before it was
    lost; only then may it have reached thelca, and only then does the message say so.
    """

    def __init__(self, reason: str, *, message_id: str | None = None, sent: bool = False) -> None:
        self.message_id = message_id
        self.sent = sent
        if sent and message_id is not None:
            # The command may have reached the queue before the connection died.
            reason += (
                f"; message {message_id} may or may not have reached thelca: send it again "
                "with the same message_id, which thelca applies only once"
            )
        super().__init__(reason)


class AccessRefused(ConnectionFailed):
    """Raised at once when the broker refuses the login or the virtual host: never retried."""
