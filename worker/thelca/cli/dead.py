"""`thelca dead list|retry`: look at the dead letters, and send dead commands back."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import orjson

from thelca.cli.common import EXIT_UNAVAILABLE, EXIT_USAGE, positive_int, token_of
from thelca.settings import Settings, add_options

if TYPE_CHECKING:
    from thelca.amqp import DeadLetter, DeadQueue, Retried

EXIT_NOT_ALL = 1  # something asked for was not retried
BODY_WIDTH = 100
HEADERS_WIDTH = 200

RUNS_AS_NOTE = (
    "A letter that carries its own token runs as that token's user. One without runs only "
    "with --as-operator, as the user of the operator's token, and the event records both: "
    "the operator as its user, the letter's sender as retry_of."
)
UNSURE_NOTE = (
    "A letter whose sender is not known for certain (no token, only headers that its "
    "publisher could have written) runs as the operator only when named with --message-id."
)
RETRY_WHY = {
    "sent-own-token": "with its own token",
    "sent-as-operator": "as the user of the operator's token",
    "no-token": "no token (the worker strips it from dead letters): add --as-operator and a "
    "token (env THELCA_TOKEN) to run it as that token's user; left in the dead queue",
    "sender-unknown": "no token and its sender is not known for certain: check it with "
    "`thelca dead list`, then name it with --message-id to run it as the operator; left in "
    "the dead queue",
    "not-dead-lettered": "not dead-lettered by the worker or the broker (published straight "
    "into the dead queue, or by a broker user that is not the worker): never sent; left in "
    "the dead queue",
    "not-a-command": "not a command from the commands queue; left in the dead queue",
    "own-reply-to": "its reply_to names one of thelca's own queues, so it was not run: a "
    "retry would only bring it back; left in the dead queue",
    "unroutable": "the commands queue does not exist; left in the dead queue",
    "refused": "the broker refused the publish; left in the dead queue",
    "unencodable": "a header cannot be sent again as it is; left in the dead queue",
}


def add_dead_parser(sub: Any) -> None:
    """Add `dead list` and `dead retry` to the thelca parser."""
    dead = sub.add_parser(
        "dead", help="list the dead letters, or send dead commands back",
        description="Operate on <prefix>.dead: the commands that failed with 500 (dead-lettered "
        "by the worker without their token) and those the broker dead-lettered (with their "
        "original headers). Anyone who may publish to the default exchange can also put "
        "letters there: each is shown with how it came and who sent it, as far as can be "
        "told. Restrict who may run this.",
    )
    verbs = dead.add_subparsers(title="commands", metavar="COMMAND", required=True)
    listing = verbs.add_parser(
        "list", help="show the dead letters without removing them",
        description="Show the messages of <prefix>.dead, oldest first, and how many there are: "
        "why each is there, how it came (the exchange, the broker-checked user_id), who sent "
        "it and how sure that is. Nothing is removed: every message goes back to the queue in "
        "its order. A token is never shown, only whether the message carries one; values that "
        "are not UTF-8 are shown escaped. Exit status: 0, or 3 when the broker or the queue "
        "is not there.",
    )
    listing.add_argument("--limit", type=positive_int, default=100,
                         help="show at most this many messages (default 100)")
    listing.add_argument("--json", action="store_true",
                         help="print JSON, with the whole bodies and every header")
    add_options(listing, "broker", "dead", "logging")
    listing.set_defaults(func=run_list)
    _add_retry_parser(verbs)


def _add_retry_parser(verbs: Any) -> None:
    retry = verbs.add_parser(
        "retry", help="send dead commands back to the commands queue",
        description="Publish dead commands again to <prefix>.commands (mandatory, confirmed) "
        "with their body, message_id, correlation_id and reply_to; a dead message is removed "
        "only once the broker confirmed its command. Safe to repeat: commands are idempotent "
        "by message_id. Only letters the worker or the broker dead-lettered are sent, never "
        f"one published straight into the dead queue. {RUNS_AS_NOTE} {UNSURE_NOTE} "
        "Exit status: 0 when everything asked for was retried, 1 otherwise, 2 for "
        "--as-operator without a token, 3 when the broker or the queue is not there.",
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every command in the dead queue")
    which.add_argument("--message-id", dest="message_ids", nargs="+", action="extend",
                       metavar="ID", help="the commands with these message_ids (as `dead "
                       "list` shows them, escapes included)")
    retry.add_argument("--as-operator", action="store_true",
                       help="run the letters that carry no token of their own as the user of "
                       "the given token; the event records the letter's sender as retry_of")
    retry.add_argument("--token", help="with --as-operator: the operator's Bearer token (env "
                       "THELCA_TOKEN); never printed or logged. Prefer the env THELCA_TOKEN: "
                       "other local users can read a command line (ps)")
    add_options(retry, "broker", "dead", "logging")
    retry.set_defaults(func=run_retry)


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    """Print the head of the dead queue; nothing is removed."""
    from thelca.amqp import DeadLettersUnavailable, list_dead
    from thelca.bootstrap import tls_files

    tls = tls_files(settings)
    try:
        queue = list_dead(settings.amqp_url, settings.names, args.limit, tls=tls,
                          worker_user=settings.worker_broker_user)
    except DeadLettersUnavailable as error:
        print(f"thelca dead list: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(_as_json(queue) if args.json else _as_text(queue))
    return 0


def run_retry(args: argparse.Namespace, settings: Settings) -> int:
    """Send the chosen dead commands back and report each one."""
    from thelca.amqp import DeadLettersUnavailable, retry_dead
    from thelca.bootstrap import tls_files

    tls = tls_files(settings)
    token = token_of(args)
    if args.as_operator and token is None:
        print("thelca dead retry: --as-operator needs the operator's token: --token or "
              "THELCA_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    wanted = None if args.all else set(args.message_ids)
    names = settings.names
    print(f"retrying from {names.dead} to {names.commands}")
    if token is not None and not args.as_operator:
        print("note: a token was given without --as-operator: it is not used; letters run "
              "only with their own token")
    print(f"note: {RUNS_AS_NOTE}")
    try:
        outcomes = retry_dead(settings.amqp_url, names, message_ids=wanted,
                              operator_token=token if args.as_operator else None, tls=tls,
                              worker_user=settings.worker_broker_user)
    except DeadLettersUnavailable as error:
        _report(error.retried, set())
        print(f"thelca dead retry: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    missing = (wanted or set()) - {o.letter.message_id for o in outcomes}
    _report(outcomes, missing)
    everything = all(o.sent for o in outcomes) and not missing
    return 0 if everything else EXIT_NOT_ALL


def _report(outcomes: list[Retried], missing: set[str]) -> None:
    for outcome in outcomes:
        verb = "retried " if outcome.sent else "skipped "
        why = RETRY_WHY[outcome.status]
        if outcome.status == "sent-as-operator":
            sender = outcome.letter.sender.known_user
            why += f" (sent by {_clean(sender) if sender else 'unknown'})"
        print(f"{verb} {_id(outcome.letter.message_id)}: {why}")
    for message_id in sorted(missing):
        print(f"not found {_clean(message_id)}: no such message_id in the dead queue")
    sent = sum(o.sent for o in outcomes)
    print(f"retried {sent}, not retried {len(outcomes) - sent + len(missing)}")


def _as_text(queue: DeadQueue) -> str:
    shown = len(queue.letters)
    more = f"; showing the first {shown}" if shown < queue.count else ""
    lines = [f"{queue.name}: {queue.count} message(s){more}; nothing was removed"]
    for letter in queue.letters:
        headers = orjson.dumps(letter.headers).decode()
        lines += [
            f"#{letter.position}  message_id {_id(letter.message_id)}  "
            f"correlation_id {_id(letter.correlation_id)}",
            f"    reason  {_reason(letter)}",
            f"    came    {_came(letter)}",
            f"    sender  {_sender(letter)} [{letter.sender.known}: "
            f"{_clean(letter.sender.why)}]",
            f"    token   {'present' if letter.has_token else 'absent'}",
            f"    headers {_clean(headers, HEADERS_WIDTH)}",
            f"    body    {_clean(_body(letter), BODY_WIDTH)}",
        ]
    return "\n".join(lines)


def _as_json(queue: DeadQueue) -> str:
    value = {
        "queue": queue.name,
        "count": queue.count,
        "messages": [_letter_json(letter) for letter in queue.letters],
    }
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "position": letter.position,
        "message_id": letter.message_id,
        "correlation_id": letter.correlation_id,
        "dead_lettered_by": letter.by,
        "reason": letter.reason,
        "deaths": [{"reason": d.reason, "queue": d.queue, "count": d.count}
                   for d in letter.deaths],
        "exchange": letter.exchange,
        "user_id": letter.user_id,
        "user": letter.user,
        "sender": {"user": letter.sender.user, "known": letter.sender.known,
                   "why": letter.sender.why},
        "reply_to": letter.reply_to,
        "token": "present" if letter.has_token else "absent",
        "headers": letter.headers,
        "body": _body(letter),
    }


def _came(letter: DeadLetter) -> str:
    exchange = f"exchange {_clean(letter.exchange)}" if letter.exchange else \
        "the default exchange (published straight into the queue)"
    return f"{exchange}, user_id {_id(letter.user_id)}"


def _sender(letter: DeadLetter) -> str:
    if letter.sender.user is not None:
        return _clean(letter.sender.user)
    return "its token's user" if letter.sender.known == "token" else "unknown"


def _reason(letter: DeadLetter) -> str:
    """Why it is dead, from whoever dead-lettered it; a publisher's own claims are headers."""
    if letter.by == "broker":
        death = letter.deaths[0]
        count = f", count {death.count}" if death.count is not None else ""
        return _clean(f"{death.reason} (queue {death.queue or '?'}{count}) [broker]")
    if letter.reason is not None:
        return f"{_clean(letter.reason)} [{letter.by}]"
    return f"- [{letter.by}]"


def _body(letter: DeadLetter) -> str:
    return letter.body.decode("utf-8", errors="backslashreplace")


def _id(value: str | None) -> str:
    return _clean(value) if value else "-"


def _clean(text: str, width: int | None = None) -> str:
    """One line of printable text: a message may hold anything, escape sequences included."""
    printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if width is not None and len(printable) > width:
        return printable[: width - 3] + "..."
    return printable
