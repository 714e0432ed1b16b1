"""Where a profiled worker's CPU went, by package: pika, the store's driver, thelca, ...

    python benchmarks/profile_shares.py DIR/sqlite.prof [--commands N]

Reads a cProfile file (latency_ladder.py --profile DIR, or profile_worker.py
--save FILE) and sums each function's own time by where the function lives,
so that "what limits the worker" is a few lines: the share of pika (frames,
the I/O loop), of the store's driver (sqlite3, psycopg), of JSON (orjson),
of thelca's own code, and of the rest. With --commands, each share is also
given in milliseconds per command. A built-in that names no share by itself
(isinstance, len, a list's append) counts for whoever called it.
"""

from __future__ import annotations

import argparse
import pstats
from collections import defaultdict

# The first of these found in a function's file (or built-in's name) names its share.
SHARES = (
    ("pika", ("/pika/",)),
    ("sqlite3", ("sqlite3",)),
    ("psycopg", ("/psycopg/", "psycopg_binary", "psycopg")),
    ("orjson", ("orjson",)),
    ("prometheus_client", ("/prometheus_client/",)),
    ("logging", ("/logging/",)),
    ("thelca (worker/)", ("/worker/thelca/",)),
    ("thelca_client (publisher/)", ("/publisher/thelca_client/",)),
    ("socket, select, ssl", ("socket", "select", "epoll", "ssl")),
    ("the tracer (benchmarks/)", ("/benchmarks/",)),
)


REST = "the rest (Python's own library)"


def share_of(filename: str, name: str) -> str | None:
    """The share a function counts for; None for a built-in that names none."""
    where = f"{filename}:{name}"
    for share, marks in SHARES:
        if any(mark in where for mark in marks):
            return share
    return None if filename == "~" else REST


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", help="a cProfile file")
    parser.add_argument("--commands", type=int, help="commands the profile covers")
    args = parser.parse_args()
    stats = pstats.Stats(args.profile).stats  # type: ignore[attr-defined]
    own: dict[str, float] = defaultdict(float)
    for (filename, _line, name), (_cc, _nc, tottime, _ct, callers) in stats.items():
        share = share_of(filename, name)
        if share is not None:
            own[share] += tottime
            continue
        for (caller_file, _l, caller_name), edge in callers.items():  # edge: cc, nc, tt, ct
            own[share_of(caller_file, caller_name) or REST] += edge[2]
    total = sum(own.values())
    print(f"{args.profile}: {total:.3f} s of CPU in all")
    for share, seconds in sorted(own.items(), key=lambda kv: -kv[1]):
        per = f"  {seconds / args.commands * 1000:6.3f} ms/command" if args.commands else ""
        print(f"  {share:42} {seconds:8.3f} s  {seconds / total:6.1%}{per}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
