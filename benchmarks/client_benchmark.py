"""thelca's own clients against the raw-pika load generator, on the same worker, in one run.

    python benchmarks/client_benchmark.py            # 10,000 creates per scenario and round
    python benchmarks/client_benchmark.py --quick    # 3,000, for iterating

One `thelca worker` and one `thelca logger` (SQLite store, every guarantee on)
serve every scenario, on a prefix of their own:

- the floor: the load generator of bench/load.py, the least pika code
  that keeps 200 creates in flight (direct reply-to, no confirms);
- AsyncClient, 200 creates in flight (200 tasks, one client);
- Client.create_many, window 200 (the blocking client, pipelined);
- Client.publish_many, window 200 (fire-and-forget; the rate of confirms,
  not of replies, so it is shown but not held to the target);
- Client.create one at a time, the way a script without pipelining goes.

The scenarios take turns for `--rounds` rounds, so that a neighbour's load
falls on all of them; each rate is all its commands over all its time. The
target: each pipelined client at least 0.8x the floor. It prints the table,
and exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import URL, Load, creates
from bench.processes import delete, start, stop, wait_consumed

from thelca_client import AsyncClient, Client
from thelca_client.contract import encode_command

TARGET = 0.8
WINDOW = 200


@dataclass
class Tally:
    """One scenario's commands, wall time and client CPU time over every round."""

    commands: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    statuses: set[int] = field(default_factory=set)

    @property
    def rate(self) -> float:
        return self.commands / self.seconds if self.seconds else 0.0

    def add(self, commands: int, seconds: float, cpu: float) -> None:
        self.commands += commands
        self.seconds += seconds
        self.cpu += cpu


def timed(tally: Tally, commands: int, work: Callable[[], None]) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    tally.add(commands, time.perf_counter() - wall, time.process_time() - cpu)


# ---------------------------------------------------------------- the scenarios


def floor(prefix: str, n: int, tally: Tally) -> None:
    load = Load(prefix)
    try:
        def work() -> None:
            run = load.run(n, WINDOW, creates)
            tally.statuses.update(run.statuses)

        timed(tally, n, work)
    finally:
        load.close()


def async_client(prefix: str, n: int, tally: Tally) -> None:
    async def scenario() -> None:
        async with AsyncClient(URL, prefix=prefix, token="bench", timeout=120) as client:
            await client.connect()
            todo = iter(range(n))

            async def task() -> None:
                for i in todo:
                    await client.create({"type": "STORY", "n": i})

            wall, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(task() for _ in range(WINDOW)))
            tally.add(n, time.perf_counter() - wall, time.process_time() - cpu)
            tally.statuses.add(200)

    asyncio.run(scenario())


def create_many(prefix: str, n: int, tally: Tally) -> None:
    with Client(URL, prefix=prefix, token="bench", timeout=120) as client:
        client.create_many([{"warm": True}])  # the pipeline's connection, made once

        def work() -> None:
            client.create_many([{"type": "STORY", "n": i} for i in range(n)], window=WINDOW)

        timed(tally, n, work)
        tally.statuses.add(200)


def publish_many(prefix: str, n: int, tally: Tally) -> None:
    body = encode_command("create", item={"properties": {"type": "STORY"}})
    with Client(URL, prefix=prefix, token="bench", timeout=120) as client:
        client.publish_many([body])

        def work() -> None:
            client.publish_many([body] * n, window=WINDOW)

        timed(tally, n, work)


def one_at_a_time(prefix: str, n: int, tally: Tally) -> None:
    with Client(URL, prefix=prefix, token="bench", timeout=120) as client:
        client.create({"warm": True})

        def work() -> None:
            for i in range(n):
                client.create({"type": "STORY", "n": i})

        timed(tally, n, work)


# ---------------------------------------------------------------- the run


def measure(work: Path, n: int, rounds: int) -> dict[str, Tally]:
    prefix = f"bench-clients-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "THELCA_PREFIX": prefix, "THELCA_AUTHORITY": "test-only",
           "THELCA_STORE": f"sqlite:///{work / 'thelca.db'}",
           "THELCA_EVENT_LOG": str(work / "events.log"), "THELCA_LOG_LEVEL": "WARNING",
           "THELCA_AMQP_URL": URL}
    thelca = [sys.executable, "-m", "thelca"]
    processes = [start([*thelca, "worker"], env, work / "worker.out"),
                 start([*thelca, "logger"], env, work / "logger.out")]
    scenarios: dict[str, Callable[[str, int, Tally], None]] = {
        "raw pika load generator (the floor)": floor,
        "AsyncClient, 200 in flight": async_client,
        "Client.create_many, window 200": create_many,
        "Client.publish_many (confirms only)": publish_many,
        "Client.create, one at a time": one_at_a_time,
    }
    tallies = {name: Tally() for name in scenarios}
    try:
        wait_consumed(f"{prefix}.commands")
        wait_consumed(f"{prefix}.events.log")
        floor(prefix, min(n, 2000), Tally())  # warm the worker and the store up
        for _ in range(rounds):
            for name, scenario in scenarios.items():
                count = max(n // 20, 200) if scenario is one_at_a_time else n
                scenario(prefix, count, tallies[name])
    finally:
        stop(processes)
        delete(prefix, ["commands", "events.log", "dead", "replay"], ["events", "dead"])
    return tallies


def report(tallies: dict[str, Tally]) -> bool:
    base = tallies["raw pika load generator (the floor)"].rate
    held = ("AsyncClient, 200 in flight", "Client.create_many, window 200")
    ok = True
    print(f"{'':40} {'creates/s':>10} {'x floor':>8} {'client CPU':>16}  target")
    for name, tally in tallies.items():
        ratio = tally.rate / base if base else 0.0
        cpu = f"{tally.cpu / tally.commands * 1e6:,.0f} us/call" if tally.commands else ""
        target = ""
        if name in held:
            met = ratio >= TARGET
            ok = ok and met
            target = f">= {TARGET:.2f}x {'ok' if met else 'MISSED'}"
        print(f"{name:40} {tally.rate:10,.0f} {ratio:7.2f}x {cpu:>16}  {target}")
    statuses = set().union(*(t.statuses for t in tallies.values()))
    print(f"statuses seen: {sorted(statuses)}")
    return ok and statuses == {200}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=10_000,
                        help="creates per scenario and round (default 10000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of turns (default 2)")
    parser.add_argument("--quick", action="store_true", help="3000 creates, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.commands, args.rounds = 3000, 1
    with tempfile.TemporaryDirectory(prefix="thelca-client-bench-") as directory:
        started = time.monotonic()
        tallies = measure(Path(directory), args.commands, args.rounds)
        print(f"{os.cpu_count()} cores, {args.commands} creates per scenario and round, "
              f"{args.rounds} rounds, {time.monotonic() - started:.0f} s in all")
        return 0 if report(tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
