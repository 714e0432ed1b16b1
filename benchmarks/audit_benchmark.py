"""How fast `thelca audit` walks a chained log, against the floor measured in the same run.

Writes a chained event log of N lines (default 1,000,000) in the live system's
format, with a signed checkpoint every 10,000 lines, in a temporary directory.
Then:

- the floor: read the same file in 1 MiB blocks, split it into lines and hash
  each line with hashlib (`sha256(line).digest()`) in a plain loop, in this
  process;
- `thelca audit --log FILE --public-key PUB` as a user runs it, process start
  included; its peak memory is printed too.

Each runs --repeat times (default 3), taking turns, and the best of each
counts. Both are single-threaded and read a file in the page cache, so on an
idle machine their CPU time is their time on the clock; the target is judged
on CPU time, which the load of other processes on a shared machine bends the
least (the clock times are printed too).

Prints both times and their ratio, and exits 1 when the audit did not say
"intact" or took more than --target times the floor (default 2). The target
is for the full run: with few lines, starting the process (printed too) weighs
more than reading. Example:

    .venv/bin/python benchmarks/audit_benchmark.py              # the full run
    .venv/bin/python benchmarks/audit_benchmark.py --lines 100000
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from thelca.audit.chain import Chain
from thelca.audit.checkpoints import CheckpointWriter, checkpoints_path

USER = "a-test-only-id-bench"


def make_log(path: Path, lines: int, every: int, key: Ed25519PrivateKey) -> None:
    """The log, each line linked, and its checkpoints (the way the logger will write them)."""
    chain = Chain.resume(path)
    checkpoints = CheckpointWriter(checkpoints_path(path), key)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    chunk: list[bytes] = []
    with open(path, "ab") as file:
        for n in range(lines):
            moment = (start + timedelta(microseconds=250 * n)).isoformat(timespec="microseconds")
            item_id = f"{n // 4:08x}-5b1d-4c3e-9f61-1f7d2a9b8c01"
            event = {"time": moment, "type": "Item updated", "user": USER,
                     "value": {"id": item_id, "created_at": moment, "created_by": USER,
                               "properties": {"type": "STORY", "title": f"story {n}",
                                              "points": n % 13, "status": "IN PROGRESS"}},
                     "id": f"{n:032x}", "version": 1 + n % 4}
            chunk.append(chain.link(orjson.dumps(event) + b"\n"))
            if len(chunk) == every or n == lines - 1:
                file.write(b"".join(chunk))
                file.flush()
                chunk.clear()
                checkpoints.write(chain.lines, chain.last)
    checkpoints.close()


class Timing(NamedTuple):
    """One run: seconds on the clock, and seconds of CPU (user + system) it used."""

    wall: float
    cpu: float


def floor(path: Path) -> tuple[Timing, int]:
    """Read the file, split it into lines and hash each one: (its timing, lines)."""
    started, cpu = time.perf_counter(), time.process_time()
    sha256 = hashlib.sha256
    count = 0
    rest = b""
    with open(path, "rb") as file:
        while data := file.read(1 << 20):
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            for line in lines:
                sha256(line).digest()
            count += len(lines)
    return Timing(time.perf_counter() - started, time.process_time() - cpu), count


def run_audit(path: Path, public: Path) -> tuple[Timing, str, int]:
    """`thelca audit` in its own process: (its timing, its output, its exit status)."""
    thelca = Path(sys.executable).with_name("thelca")
    started, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run([str(thelca), "audit", "--log", str(path), "--public-key", str(public)],
                          capture_output=True, text=True, check=False)
    timing = Timing(time.perf_counter() - started, _children_cpu() - cpu)
    return timing, done.stdout + done.stderr, done.returncode


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process_start() -> float:
    """The best of three `thelca --version`: what starting the command costs before any work."""
    thelca = str(Path(sys.executable).with_name("thelca"))
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([thelca, "--version"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=10_000, help="lines between checkpoints")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each, taking turns; the best of each counts (default 3)")
    parser.add_argument("--target", type=float, default=2.0,
                        help="most the audit may take, in floors (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="thelca-audit-bench-") as directory:
        log = Path(directory) / "thelca-events.log"
        key = Ed25519PrivateKey.generate()
        public = Path(directory) / "log-signing.pub.pem"
        public.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        started = time.perf_counter()
        make_log(log, args.lines, args.every, key)
        size = log.stat().st_size
        print(f"wrote {args.lines:,} chained lines ({size / 1e6:.0f} MB) and "
              f"{-(-args.lines // args.every):,} signed checkpoints in "
              f"{time.perf_counter() - started:.1f} s")
        floors: list[Timing] = []
        audits: list[Timing] = []
        for _ in range(args.repeat):  # taking turns, so both meet the same load on the machine
            timing, counted = floor(log)
            floors.append(timing)
            timing, output, status = run_audit(log, public)
            audits.append(timing)
        start = _process_start()
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(output.rstrip())
    best = Timing(min(t.wall for t in floors), min(t.cpu for t in floors))
    audited = Timing(min(t.wall for t in audits), min(t.cpu for t in audits))
    print(f"floor (read, split, sha256 each line): {best.cpu:.2f} s CPU, {best.wall:.2f} s "
          f"on the clock, for {counted:,} lines ({counted / best.cpu:,.0f} lines/s)")
    print(f"thelca audit (process start included): {audited.cpu:.2f} s CPU, {audited.wall:.2f} s "
          f"on the clock ({args.lines / audited.cpu:,.0f} lines/s), peak memory {peak:.0f} MiB")
    print("  each run (CPU / clock): floor "
          + ", ".join(f"{t.cpu:.2f}/{t.wall:.2f}" for t in floors) + " s; audit "
          + ", ".join(f"{t.cpu:.2f}/{t.wall:.2f}" for t in audits)
          + f" s; starting `thelca --version` alone: {start:.2f} s on the clock")
    ratio = audited.cpu / best.cpu
    print(f"ratio: {ratio:.2f} x the floor in CPU time (target at most {args.target}); "
          f"{audited.wall / best.wall:.2f} x on the clock")
    if status != 0 or not output.rstrip().endswith("intact"):
        print(f"FAILED: thelca audit exited {status}")
        return 1
    if ratio > args.target:
        print("FAILED: slower than the target")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
