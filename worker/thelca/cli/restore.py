"""`thelca restore` and `thelca verify`: rebuild a store from the event log, or check one."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from thelca.cli.common import EXIT_UNAVAILABLE, EXIT_USAGE
from thelca.errors import ChainBroken
from thelca.settings import Settings, add_options

EXIT_PROBLEMS = 1  # restore: problem lines (the rest was restored); verify: differences
SHOWN = 50  # problem lines and differences printed in full; the rest are counted

EXIT_STATUS = (
    "Exit status: 0 done, 1 {one}, 2 usage (a bad --until, {two}), 3 the store or "
    "the log is not available."
)


def add_restore_parsers(sub: Any) -> None:
    """Add `restore` and `verify` to the thelca parser."""
    restore = sub.add_parser(
        "restore", help="rebuild a store from the event log, to its end or to a moment",
        description="Rebuild the item store from the event log (its numbered segments, then "
        "the live file), to its end or, with --until, to the state at that moment. Publishes "
        "nothing. Prints what it read, applied and skipped, and every line it could not use. "
        "Follows the log's hash chain as it goes, and refuses a log whose chain is broken (a "
        "line edited, inserted, removed or reordered), leaving the store empty, unless given "
        "--accept-broken-chain. "
        + EXIT_STATUS.format(one="when some lines could not be used (everything else was "
                             "restored), or the hash chain is broken", two="a store that "
                             "already holds items without --force"),
    )
    _log_arguments(restore)
    restore.add_argument("--force", action="store_true",
                         help="empty a store that already holds items first (its items, "
                         "links, processed commands and outbox are deleted)")
    restore.add_argument("--accept-broken-chain", action="store_true",
                         help="restore a log whose hash chain is broken anyway, with a "
                         "warning (`thelca audit` says where and how it was altered)")
    add_options(restore, "store", "logging")
    restore.set_defaults(func=run_restore)

    verify = sub.add_parser(
        "verify", help="compare the store, item by item, with what the event log says",
        description="Fold the event log in memory and compare every item and its version "
        "with the store, opened read-only. Prints each difference: missing (in the log, not "
        "in the store), extra (in the store, not in the log), different (version or fields). "
        + EXIT_STATUS.format(one="when there are differences", two="none other"),
    )
    _log_arguments(verify)
    add_options(verify, "store", "logging")
    verify.set_defaults(func=run_verify)


def _log_arguments(parser: argparse.ArgumentParser) -> None:
    # The same setting as the logger's --event-log: the flag, else THELCA_EVENT_LOG.
    default = os.environ.get("THELCA_EVENT_LOG") or "thelca-events.log"
    parser.add_argument("--log", "--event-log", dest="log", default=default, metavar="FILE",
                        help="the event log (the live file's path; its segments FILE.000001 "
                        "... are read first); default: env THELCA_EVENT_LOG, else "
                        "thelca-events.log")
    parser.add_argument("--until", metavar="TIME",
                        help="only events whose time is at or before TIME, ISO 8601 with an "
                        "offset, e.g. 2026-11-26T23:59:59.999999+00:00 or ...Z")


def run_restore(args: argparse.Namespace, settings: Settings) -> int:
    from thelca.restore.rebuild import restore
    from thelca.stores import open_store

    try:
        until = _until(args.until)
    except ValueError as error:
        print(f"thelca restore: --until: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not _log_exists(args.log):
        return _unavailable("restore", f"no event log at {args.log} (nor any segment of it)")
    try:
        store = open_store(settings.store)
    except Exception as error:  # any backend's way of saying no: report it, exit 3
        return _unavailable("restore", f"cannot open the store: {error}")
    try:
        held, links = store.count_items(), store.count_links()
        if (held or links) and not args.force:
            print(f"thelca restore: the store already holds {held} items and {links} links; "
                  "restore into a fresh store, or give --force to empty it first",
                  file=sys.stderr)
            return EXIT_USAGE
        if held or links:
            store.clear()
            print(f"emptied the store ({held} items, {links} links)")
        with _progress("restore") as progress:
            report = restore(args.log, store, until=until, progress=progress,
                             accept_broken_chain=args.accept_broken_chain)
    except ChainBroken as broken:
        store.clear()  # it was empty (or emptied by --force): it is left so
        print(f"thelca restore: the event log's hash chain is broken at {broken.where}: lines "
              "were edited, inserted, removed or reordered. Nothing was restored (the store "
              f"is empty). `thelca audit --log {args.log}` says more; give "
              "--accept-broken-chain to restore this log anyway.", file=sys.stderr)
        return EXIT_PROBLEMS
    except OSError as error:  # gone, or unreadable (permissions, I/O), like verify
        return _unavailable("restore", str(error))
    finally:
        store.close()
    print("\n".join(report.describe()))
    print(report.describe_chain())
    _print_some("problem line", [str(p) for p in report.problems])
    if report.chain_break_count:
        _print_some("chain break", report.chain_breaks)
        print(f"thelca restore: warning: the event log's hash chain is broken at "
              f"{report.chain_break_count} places, the first at {report.chain_breaks[0]}; "
              "restored anyway (--accept-broken-chain)", file=sys.stderr)
    return EXIT_PROBLEMS if report.problems else 0


def run_verify(args: argparse.Namespace, settings: Settings) -> int:
    from thelca.restore.compare import verify
    from thelca.stores import open_store

    try:
        until = _until(args.until)
    except ValueError as error:
        print(f"thelca verify: --until: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not _log_exists(args.log):
        return _unavailable("verify", f"no event log at {args.log} (nor any segment of it)")
    try:
        store = open_store(settings.store, writer=False)
    except Exception as error:  # any backend's way of saying no: report it, exit 3
        return _unavailable("verify", f"cannot open the store: {error}")
    try:
        with _progress("verify") as progress:
            report = verify(args.log, store, until=until, progress=progress)
    except OSError as error:  # the log: gone, or unreadable (permissions, I/O)
        return _unavailable("verify", str(error))
    except Exception as error:
        return _unavailable("verify", f"cannot read the store: {error}")
    finally:
        store.close()
    print("\n".join(report.log.describe("items in the log", "links in the log")))
    _print_some("problem line", [str(p) for p in report.log.problems])
    print(f"{report.log_links} links in the log, {report.store_links} in the store")
    print(f"{report.log_items} items in the log, {report.store_items} in the store, "
          f"{len(report.differences)} differences")  # of items and links
    _print_some("difference", [str(d) for d in report.differences])
    return EXIT_PROBLEMS if report.differences else 0


def _until(text: str | None) -> datetime | None:
    """The --until moment, or None without one; ValueError when it is not a time."""
    from thelca_client.contract import parse_time

    return None if text is None else parse_time(text)


def _log_exists(path: str) -> bool:
    from thelca.eventlog.segments import log_segments

    return Path(path).exists() or bool(log_segments(path))


def _unavailable(command: str, why: str) -> int:
    print(f"thelca {command}: {why}", file=sys.stderr)
    return EXIT_UNAVAILABLE


def _print_some(what: str, lines: list[str]) -> None:
    for line in lines[:SHOWN]:
        print(f"  {what}: {line}")
    if len(lines) > SHOWN:
        print(f"  ... and {len(lines) - SHOWN} more {what}s")


@contextmanager
def _progress(command: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar over the log's bytes on a terminal (stderr); nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=command,
              file=sys.stderr, leave=False) as bar:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
            if done >= total:  # read: what is left is the store's part
                bar.set_description(f"{command}: " + ("writing the store" if command == "restore"
                                                      else "comparing with the store"))

        yield update
