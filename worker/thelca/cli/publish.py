"""`thelca publish COMMAND`: send one command and print the reply as JSON.

Items: create, read, update; links: create-link, read-link, update-link, delete-link;
searches: search, search-links.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
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
from thelca_client.contract import (
    JSON,
    LINK_ENDS,
    SEARCH_LIMIT,
    SEARCH_LIMIT_MAX,
    CreateLink,
    DeleteLink,
    ReadLink,
    SearchItems,
    SearchLinks,
    UpdateLink,
    encode,
    encode_command,
)


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
    for parser in (create, read, update, *_link_parsers(verbs), *_search_parsers(verbs)):
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


def _link_parsers(verbs: Any) -> list[argparse.ArgumentParser]:
    create = verbs.add_parser("create-link", help="link two items")
    create.add_argument("--source", required=True, help="the id of the item the link is from")
    create.add_argument("--target", required=True, help="the id of the item the link is to")
    create.add_argument("--properties", default="{}", help="the link's properties, a JSON "
                        "object (default {}), such as '{\"type\": \"BLOCKS\"}'")
    read = verbs.add_parser("read-link", help="read a link")
    read.add_argument("--id", required=True, help="the link's id")
    update = verbs.add_parser(
        "update-link", help="update a link",
        description="With --source, --target or --properties: read the link, change what "
        "is given and update it at the version read (409 if someone else changed it "
        "meanwhile). With --link: send that whole link as it is.",
    )
    update.add_argument("--id", required=True, help="the link's id")
    update.add_argument("--source", help="the new source item's id")
    update.add_argument("--target", help="the new target item's id")
    update.add_argument("--properties", help="the new properties, a JSON object")
    update.add_argument("--link", help="the whole link, a JSON object, as read")
    delete = verbs.add_parser("delete-link", help="delete a link")
    delete.add_argument("--id", required=True, help="the link's id")
    for parser in (update, delete):
        parser.add_argument("--expected-version", type=int,
                            help="refuse (409) unless the link is at this version")
    return [create, read, update, delete]


def _search_parsers(verbs: Any) -> list[argparse.ArgumentParser]:
    items = verbs.add_parser(
        "search", help="search items by their properties",
        description="The items whose properties hold every key of --where with an equal "
        "JSON value, in creation order; the reply's next, given as --after, is the next page.")
    items.add_argument("--where", default="{}", help="a JSON object such as "
                       "'{\"type\": \"STORY\", \"status\": \"OPEN\"}' (default {}: every item)")
    links = verbs.add_parser(
        "search-links", help="search the links of an item",
        description="The links from an item (--source), to it (--target) or either, in "
        "creation order; the reply's next, given as --after, is the next page.")
    end = links.add_mutually_exclusive_group(required=True)
    for name in LINK_ENDS:
        end.add_argument(f"--{name}", metavar="ITEM_ID",
                         help=f"the links whose {name if name != 'either' else 'either end'} "
                         "is this item")
    for parser in (items, links):
        parser.add_argument("--limit", type=int, default=SEARCH_LIMIT,
                            help=f"at most this many (1 to {SEARCH_LIMIT_MAX}, default "
                            f"{SEARCH_LIMIT})")
        parser.add_argument("--after", metavar="ID", help="the page after this id (the "
                            "previous reply's next)")
    return [items, links]


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
    if args.verb in _BODIES:
        return _BODIES[args.verb](args, client, token)
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


def _create_link(args: argparse.Namespace, client: Any, token: str) -> bytes | None:
    properties = _json_object("--properties", args.properties)
    return None if properties is None else encode(CreateLink(
        {"source": args.source, "target": args.target, "properties": properties}))


def _read_link(args: argparse.Namespace, client: Any, token: str) -> bytes | None:
    return encode(ReadLink(args.id))


def _update_link(args: argparse.Namespace, client: Any, token: str) -> bytes | None:
    changes = (args.source, args.target, args.properties)
    if (args.link is None) == all(change is None for change in changes):
        print("thelca publish update-link: give --link, or some of --source, --target, "
              "--properties", file=sys.stderr)
        return None
    if args.link is not None:
        link = _json_object("--link", args.link)
        return None if link is None else encode(UpdateLink(args.id, link,
                                                           args.expected_version))
    properties = None
    if args.properties is not None:
        properties = _json_object("--properties", args.properties)
        if properties is None:
            return None
    current = client.read_link(args.id, token=token)
    link = dict(current.link)
    for name, value in (("source", args.source), ("target", args.target),
                        ("properties", properties)):
        if value is not None:
            link[name] = value
    version = args.expected_version if args.expected_version is not None else current.version
    return encode(UpdateLink(args.id, link, version))


def _delete_link(args: argparse.Namespace, client: Any, token: str) -> bytes | None:
    return encode(DeleteLink(args.id, args.expected_version))


def _search_items(args: argparse.Namespace, client: Any, token: str) -> bytes | None:
    where = _json_object("--where", args.where)
    return None if where is None else encode(SearchItems(where, args.limit, args.after))


def _search_links(args: argparse.Namespace, client: Any, token: str) -> bytes | None:
    (end, item_id), = [(end, getattr(args, end)) for end in LINK_ENDS
                       if getattr(args, end) is not None]
    return encode(SearchLinks(end, item_id, args.limit, args.after))


# The commands whose body a function of its own builds (the item commands are above).
_BODIES: dict[str, Callable[[argparse.Namespace, Any, str], bytes | None]] = {
    "create-link": _create_link,
    "read-link": _read_link,
    "update-link": _update_link,
    "delete-link": _delete_link,
    "search": _search_items,
    "search-links": _search_links,
}
