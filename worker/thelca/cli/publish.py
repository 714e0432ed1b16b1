"""`thelca publish create|read|update`: send one command and print the reply as JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from thelca.cli.common import (
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    quiet_client_logs,
    token_of,
)
from thelca.settings import Settings, add_options
from thelca_client.contract import JSON, encode_command


def add_publish_parser(sub: Any) -> None:
    publish = sub.add_parser(
        "publish", help="send a command and print the reply",
        description="Send one command as a client would and print the reply as JSON. "
        "Exit status: 0 for a 200 reply, 1 for any other status, 3 when no reply came.",
    )
    verbs = publish.add_subparsers(title="commands", metavar="COMMAND", required=True)
    create = verbs.add_parser("create", help="create an item")
    create.add_argument("--properties", default="{}", help="the item's properties, a JSON "
                        "object (default {})")
    read = verbs.add_parser("read", help="read an item")
    read.add_argument("--id", required=True, help="the item's id")
    update = verbs.add_parser(
        "update", help="update an item",
        description="With --properties: read the item, replace its properties and update "
        "it at the version read (409 if someone else changed it meanwhile). With --item: "
        "send that whole item as it is.",
    )
    update.add_argument("--id", required=True, help="the item's id")
    what = update.add_mutually_exclusive_group(required=True)
    what.add_argument("--properties", help="the new properties, a JSON object")
    what.add_argument("--item", help="the whole item, a JSON object, as read")
    update.add_argument("--expected-version", type=int,
                        help="refuse (409) unless the item is at this version")
    for parser in (create, read, update):
        parser.add_argument("--token", help="the Bearer token; never printed or logged. "
                            "Prefer the env THELCA_TOKEN: other local users can read a "
                            "command line (ps)")
        parser.add_argument("--message-id", help="the idempotency key (default: a new uuid)")
        parser.add_argument("--timeout", type=float, default=10.0,
                            help="seconds to wait for the reply (default 10)")
        parser.add_argument("--no-wait", action="store_true",
                            help="fire and forget: publish without reply_to and print the "
                            "message_id")
        add_options(parser, "broker", "logging")
        parser.set_defaults(func=run_publish, verb=parser.prog.rsplit(" ", 1)[-1])


def run_publish(args: argparse.Namespace, settings: Settings) -> int:
    from thelca.bootstrap import tls_files
    from thelca_client.client import Client
    from thelca_client.errors import CommandFailed, ThelcaClientError

    token = token_of(args)
    if not token:
        print("thelca publish: no token: give --token or set THELCA_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    tls = tls_files(settings)
    quiet_client_logs(settings.log_level)  # the error is printed in one line below
    try:
        with Client(settings.amqp_url, prefix=settings.prefix, timeout=args.timeout,
                    tls=tls) as client:
            body = _command_body(args, client, token)
            if body is None:
                return EXIT_USAGE
            if args.no_wait:
                message_id = client.publish(body, token=token, message_id=args.message_id)
                print(orjson.dumps({"message_id": message_id}).decode())
                return 0
            reply = client.send(body, token=token, message_id=args.message_id,
                                raise_for_status=False)
    except CommandFailed as refused:  # the read that `update --properties` starts with
        reply = refused.reply
    except ThelcaClientError as error:
        print(f"thelca publish: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(orjson.dumps(reply.to_json(), option=orjson.OPT_INDENT_2).decode())
    return 0 if reply.ok else EXIT_REFUSED


def _command_body(args: argparse.Namespace, client: Any, token: str) -> bytes | None:
    if args.verb == "create":
        properties = _json_object("--properties", args.properties)
        return None if properties is None else encode_command(
            "create", item={"properties": properties})
    if args.verb == "read":
        return encode_command("read", id=args.id)
    if args.item is not None:
        item = _json_object("--item", args.item)
        return None if item is None else encode_command(
            "update", id=args.id, item=item, expected_version=args.expected_version)
    properties = _json_object("--properties", args.properties)
    if properties is None:
        return None
    current = client.send(encode_command("read", id=args.id), token=token,
                          raise_for_status=True)
    item = dict(current.item or {}, properties=properties)
    version = args.expected_version if args.expected_version is not None else current.version
    return encode_command("update", id=args.id, item=item, expected_version=version)


def _json_object(flag: str, text: str) -> JSON | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        print(f"thelca publish: {flag} is not JSON: {error}", file=sys.stderr)
        return None
    if not isinstance(value, dict):
        print(f"thelca publish: {flag} must be a JSON object", file=sys.stderr)
        return None
    return value
