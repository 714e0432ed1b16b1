"""thelca against its references, in one run: throughput, latency, log lag, memory.

    python benchmarks/pipeline_benchmark.py                      # the full run, about 5 minutes
    python benchmarks/pipeline_benchmark.py --quick              # a small one, for iterating
    python benchmarks/pipeline_benchmark.py --quick --only sqlite,ceiling

Systems, each on a prefix of its own, all started before the first command:

- floor: benchmarks/floor.py, the least pika code that honours the contract's
  happy path (a transient classic queue, no confirms, no persistence), with a
  logger that fsyncs once per batch; every ratio is against it;
- echo: benchmarks/echo.py, a bare echo through a durable quorum queue: the
  broker's own durable round trip, the reference for latency at window 1;
- ceiling: benchmarks/ceiling.py, the contract's work on pika's asynchronous
  connection with orjson and no guarantee at all: the higher reference;
- guarded, guarded-pg: benchmarks/guarded.py, the floor's work with exactly
  thelca's guarantees (durable quorum queue, the store's transaction with the
  processed-command record and the outbox, the event confirmed before the ack,
  the logger's fsync) on SQLite and on PostgreSQL, and none of thelca's code;
  measured at window 1 only (its blocking confirms make no throughput
  figure): what the guarantees alone cost a reply;
- sqlite: `thelca worker` and `thelca logger` with their default settings
  (SQLite store, publisher confirms, idempotency, the outbox, logger fsync,
  the hash chain, checkpoints signed with a key made for the run);
- pg1, pg2: the same on PostgreSQL (THELCA_TEST_POSTGRES_URL, else
  postgresql://postgres@127.0.0.1:5432/test, a schema of its own dropped
  afterwards), one worker and `--processes 2`.

The load generator speaks the contract: commands with a bounded window of
outstanding requests, replies over direct reply-to. Every system gets a
warm-up, then two rounds of creates and of a create/read/update mix at window
200, the systems taking turns so that a neighbour's drift falls on all alike
(each throughput figure is the better round), then two rounds at window 1
(latency, the rounds pooled). It prints one table, the targets met or missed,
`thelca audit` of each thelca log, and exits 1 when a target is missed (2
when --long finds no benchmarks/store_growth.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import orjson
from bench.measure import ROUNDS, measure
from bench.options import Options, parse
from bench.processes import load_average
from bench.report import aligned, as_json, notes, rows, targets
from bench.systems import check_postgres, make_keys, running

STORE_GROWTH = Path(__file__).resolve().parent / "store_growth.py"


def store_growth(options: Options) -> dict[str, int]:
    """Run store_growth.py on each store the run measured; its exit status per store."""
    stores = (["sqlite"] if "sqlite" in options.systems else []) + (
        ["postgres"] if options.postgres else [])
    codes = {}
    for store in stores:
        args = [sys.executable, str(STORE_GROWTH), "--store", store]
        print(f"running {' '.join(args[1:])}{' --quick' if options.quick else ''}", flush=True)
        codes[store] = subprocess.run([*args, *(["--quick"] if options.quick else [])],
                                      check=False).returncode
    return codes


def main(argv: list[str] | None = None) -> int:
    options = parse(argv, __doc__)
    if options.long and not STORE_GROWTH.exists():
        print(f"--long: {STORE_GROWTH} is missing (it comes with the dedup window)")
        return 2
    if options.postgres and (why := check_postgres()):
        print(f"{why}: run without the pg systems (--only) or start PostgreSQL")
        return 2
    load_before, started = load_average(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="thelca-bench-") as directory:
        work = Path(directory)
        keys = make_keys(work)
        with ExitStack() as stack:
            systems = [stack.enter_context(running(name, work, keys))
                       for name in options.systems]
            figures = measure(systems, options.commands, options.window,
                              options.latency_commands, options.memory_commands)
        growth = store_growth(options) if options.long else {}
    found = targets(figures, systems, growth)
    meta = {"cores": os.cpu_count(), "load_before": load_before, "load_after": load_average(),
            "seconds": round(time.monotonic() - started), "commands": options.commands,
            "window": options.window, "latency_commands": options.latency_commands,
            "rounds": ROUNDS}
    print(f"{meta['cores']} cores, load {load_before} before and {meta['load_after']} after, "
          f"{options.commands} commands per scenario and round (best of {ROUNDS}), "
          f"{options.latency_commands} at window 1, {meta['seconds']} s in all")
    print(aligned(rows(figures)))
    print()
    print(aligned([["target", "figure", "wanted", ""],
                   *([t.label, t.figure, t.wanted, t.verdict] for t in found)], left=(0, 3)))
    for line in notes(figures):
        print(line)
    if options.json is not None:
        options.json.write_bytes(orjson.dumps(as_json(figures, found, meta),
                                              option=orjson.OPT_INDENT_2))
    return 1 if any(target.met is False for target in found) else 0


if __name__ == "__main__":
    sys.exit(main())
