"""`thelca dead list|retry`: look at the dead letters, and send dead commands back."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import orjson

from thelca.cli.common import EXIT_UNAVAILABLE, positive_int, token_of
from thelca.settings import Settings, add_options

if TYPE_CHECKING:
    from thelca.amqp import DeadLetter, DeadQueue, Retried

EXIT_NOT_ALL = 1  # something asked for was not retried
BODY_WIDTH = 100

RUNS_AS_NOTE = (
    "A command retried with a token runs as that token's user, not as the user who sent it."
)
RETRY_WHY = {
    "sent-own-token": "with its own token",
    "sent-given-token": "as the user of the given token",
    "no-token": "no token (the worker strips it from dead letters): give --token or "
    "THELCA_TOKEN to run it as that token's user; left in the dead queue",
    "not-a-command": "not a command from the commands queue; left in the dead queue",
    "unroutable": "the commands queue does not exist; left in the dead queue",
    "refused": "the broker refused the publish; left in the dead queue",
}


def add_dead_parser(sub: Any) -> None:
    """Add `dead list` and `dead retry` to the thelca parser."""
    dead = sub.add_parser(
        "dead", help="list the dead letters, or send dead commands back",
        description="Operate on <prefix>.dead: the commands that failed with 500 (dead-lettered "
        "by the worker without their token) and those the broker dead-lettered after too many "
        "deliveries (with their original headers). Restrict who may run this.",
    )
    verbs = dead.add_subparsers(title="commands", metavar="COMMAND", required=True)
    listing = verbs.add_parser(
        "list", help="show the dead letters without removing them",
        description="Show the messages of <prefix>.dead, oldest first, and how many there are. "
        "Nothing is removed: every message goes back to the queue in its order. A token is "
        "never shown, only whether the message carries one. Exit status: 0, or 3 when the "
        "broker or the queue is not there.",
    )
    listing.add_argument("--limit", type=positive_int, default=100,
                         help="show at most this many messages (default 100)")
    listing.add_argument("--json", action="store_true",
                         help="print JSON, with the whole bodies")
    add_options(listing, "broker", "logging")
    listing.set_defaults(func=run_list)
    _add_retry_parser(verbs)


def _add_retry_parser(verbs: Any) -> None:
    retry = verbs.add_parser(
        "retry", help="send dead commands back to the commands queue",
        description="Publish dead commands again to <prefix>.commands (mandatory, confirmed) "
        "with their body, message_id, correlation_id and reply_to; a dead message is removed "
        "only once the broker confirmed its command. Safe to repeat: commands are idempotent "
        f"by message_id. {RUNS_AS_NOTE} Without a token given, only messages that still "
        "carry their own Authorization header are sent; the others are left and reported. "
        "Exit status: 0 when everything asked for was retried, 1 otherwise, 3 when the broker "
        "or the queue is not there.",
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every command in the dead queue")
    which.add_argument("--message-id", dest="message_ids", nargs="+", action="extend",
                       metavar="ID", help="the commands with these message_ids")
    retry.add_argument("--token", help="the Bearer token to send them with (env THELCA_TOKEN), "
                       "replacing any they carry: they then run as this token's user; never "
                       "printed or logged. Prefer the env THELCA_TOKEN: other local users "
                       "can read a command line (ps)")
    add_options(retry, "broker", "logging")
    retry.set_defaults(func=run_retry)


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    """Print the head of the dead queue; nothing is removed."""
    from thelca.amqp import DeadLettersUnavailable, list_dead
    from thelca.bootstrap import tls_files

    tls = tls_files(settings)
    try:
        queue = list_dead(settings.amqp_url, settings.names, args.limit, tls=tls)
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
    wanted = None if args.all else set(args.message_ids)
    names = settings.names
    print(f"retrying from {names.dead} to {names.commands}")
    if token is not None:
        print(f"note: {RUNS_AS_NOTE}")
    try:
        outcomes = retry_dead(settings.amqp_url, names, message_ids=wanted, token=token, tls=tls)
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
        if outcome.status == "sent-given-token" and outcome.letter.user:
            why += f" (it was sent by {_clean(outcome.letter.user)})"
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
        lines += [
            f"#{letter.position}  message_id {_id(letter.message_id)}  "
            f"correlation_id {_id(letter.correlation_id)}",
            f"    reason  {_reason(letter)}",
            f"    user    {_clean(letter.user or '-')}",
            f"    token   {'present' if letter.has_token else 'absent'}",
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
        "user": letter.user,
        "reply_to": letter.reply_to,
        "token": "present" if letter.has_token else "absent",
        "body": _body(letter),
    }


def _reason(letter: DeadLetter) -> str:
    if letter.reason is not None:
        return f"{_clean(letter.reason)} [{letter.by}]"
    if not letter.deaths:
        return "- [unknown]"
    death = letter.deaths[0]
    count = f", count {death.count}" if death.count is not None else ""
    return _clean(f"{death.reason} (queue {death.queue or '?'}{count}) [broker]")


def _body(letter: DeadLetter) -> str:
    return letter.body.decode("utf-8", errors="replace")


def _id(value: str | None) -> str:
    return _clean(value) if value else "-"


def _clean(text: str, width: int | None = None) -> str:
    """One line of printable text: a message may hold anything, escape sequences included."""
    printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if width is not None and len(printable) > width:
        return printable[: width - 3] + "..."
    return printable
