"""A thelca worker under cProfile: where its time goes at window 200.

    python benchmarks/profile_worker.py                             # 20,000 creates, SQLite
    python benchmarks/profile_worker.py --store postgres --kind mix
    python benchmarks/profile_worker.py --out worker.prof           # keep it for pstats

It starts `thelca logger` and one `thelca worker` under `python -m cProfile`
(default settings; SQLite, or PostgreSQL in a schema of its own dropped
afterwards), on a prefix of their own; sends a warm-up and then N commands
(creates, or the create/read/update mix) at window W; stops the worker with
SIGTERM (it finishes what is in flight, and cProfile writes its profile); and
prints the functions with the most cumulative time and the most own time.
The profile covers the worker's whole life, its start and the warm-up
included; with the default N they are a small share. cProfile slows the
worker down (every call is counted), so its rate here is not the benchmark's:
read the shares and the call counts, not the seconds.
"""

from __future__ import annotations

import argparse
import pstats
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.load import run_once
from bench.processes import load_average
from bench.systems import check_postgres, make_keys, postgres_schema, thelca

Key = tuple[str, int, str]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--kind", choices=("creates", "mix"), default="creates")
    parser.add_argument("--commands", type=int, default=20_000, help="default 20000")
    parser.add_argument("--window", type=int, default=200, help="default 200")
    parser.add_argument("--top", type=int, default=25, help="functions per list (default 25)")
    parser.add_argument("--out", type=Path, help="keep the profile in this file")
    return parser.parse_args(argv)


def where(key: Key) -> str:
    """file:line(function), the file from its package on: thelca/..., pika/..., {built-in}."""
    path, line, function = key
    for marker in ("site-packages/", "/worker/", "/publisher/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{line}({function})" if line else function


def top(stats: pstats.Stats, cumulative: bool, count: int) -> list[str]:
    """The `count` functions with the most cumulative time, or the most own time.

    Shares are of the whole profile: the cumulative time of its outermost call.
    """
    table: dict[Key, tuple[int, int, float, float, object]] = stats.stats  # type: ignore[attr-defined]
    whole = max(entry[3] for entry in table.values())
    ranked = sorted(table.items(), key=lambda entry: entry[1][3] if cumulative else entry[1][2],
                    reverse=True)[:count]
    lines = [f"{'calls':>9} {'own s':>8} {'own %':>6} {'cum s':>8} {'cum %':>6}  function"]
    for key, (_, calls, own, in_all, _callers) in ranked:
        lines.append(f"{calls:>9,} {own:>8.3f} {100 * own / whole:>5.1f}% {in_all:>8.3f} "
                     f"{100 * in_all / whole:>5.1f}%  {where(key)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.store == "postgres" and (why := check_postgres()):
        print(why)
        return 2
    with tempfile.TemporaryDirectory(prefix="thelca-profile-") as directory:
        work = Path(directory)
        profile = args.out.resolve() if args.out else work / "worker.prof"
        load = load_average()
        with ExitStack() as stack:
            store = (f"sqlite:///{work / 'thelca.db'}" if args.store == "sqlite"
                     else stack.enter_context(postgres_schema()))
            system = stack.enter_context(
                thelca("profiled", work, store, 1, make_keys(work), profile=profile))
            run_once(system.prefix, min(2000, args.commands), args.window, "creates",
                     system.items)
            run = run_once(system.prefix, args.commands, args.window, args.kind, system.items)
        stats = pstats.Stats(str(profile))
        print(f"{args.commands} {args.kind} at window {args.window} on {args.store}: "
              f"{run.rate:,.0f}/s under cProfile, load {load} before and {load_average()} "
              f"after; statuses {run.statuses}")
        print("\nby cumulative time (the worker's whole life, its start included)")
        print("\n".join(top(stats, True, args.top)))
        print("\nby own time")
        print("\n".join(top(stats, False, args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
