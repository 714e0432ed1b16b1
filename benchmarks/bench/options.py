"""The pipeline benchmark's command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bench.systems import NAMES

FULL = {"commands": 10_000, "latency_commands": 2000, "memory_commands": 100_000}
QUICK = {"commands": 2000, "latency_commands": 400, "memory_commands": 0}


@dataclass(frozen=True)
class Options:
    systems: tuple[str, ...]
    commands: int
    window: int
    latency_commands: int
    memory_commands: int
    quick: bool
    long: bool
    json: Path | None

    @property
    def postgres(self) -> bool:
        return any(name.startswith("pg") or name == "guarded-pg" for name in self.systems)


def systems(text: str) -> tuple[str, ...]:
    """`--only`'s comma-separated names, in the table's order; the floor always, as reference."""
    chosen = {name.strip() for name in text.split(",") if name.strip()}
    unknown = chosen - set(NAMES)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown system {', '.join(sorted(unknown))} (choose from {', '.join(NAMES)})")
    return tuple(name for name in NAMES if name in chosen | {"floor"})


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"a small run for iterating: {QUICK['commands']} commands per "
                        f"scenario and round, {QUICK['latency_commands']} at window 1, "
                        "no memory run (an option given explicitly still counts)")
    parser.add_argument("--only", type=systems, default=NAMES, metavar="NAMES",
                        help=f"systems to run, comma-separated, from {','.join(NAMES)} "
                        "(default all; the floor always runs)")
    parser.add_argument("--commands", type=positive,
                        help=f"commands per throughput scenario and round "
                        f"(default {FULL['commands']})")
    parser.add_argument("--window", type=positive, default=200,
                        help="outstanding requests in the throughput scenarios (default 200)")
    parser.add_argument("--latency-commands", type=positive,
                        help=f"commands sent one at a time for latency, over both rounds "
                        f"(default {FULL['latency_commands']})")
    parser.add_argument("--memory-commands", type=int,
                        help=f"creates of the memory run on the first one-process thelca, "
                        f"0 to skip (default {FULL['memory_commands']})")
    parser.add_argument("--long", action="store_true",
                        help="then run benchmarks/store_growth.py (the store flat after the "
                        "first dedup window), on each store the run measured")
    parser.add_argument("--json", type=Path, metavar="FILE", help="save the figures there")
    return parser


def parse(argv: list[str] | None = None, description: str | None = None) -> Options:
    args = parser(description).parse_args(argv)
    sizes = QUICK if args.quick else FULL
    chosen = {key: sizes[key] if getattr(args, key) is None else getattr(args, key)
              for key in sizes}
    return Options(systems=args.only, window=args.window, quick=args.quick, long=args.long,
                   json=args.json, **chosen)
