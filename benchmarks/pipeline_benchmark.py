"""thelca against the floor, in one run: throughput, latency, log lag, memory.

    python benchmarks/pipeline_benchmark.py            # the full run, under 3 minutes
    python benchmarks/pipeline_benchmark.py --quick    # a smaller one, for iterating

The load generator speaks the contract: N commands with a bounded window of
outstanding requests, replies over direct reply-to. It runs first against the
floor (benchmarks/floor.py: the least pika code honouring the happy path, no
confirms, no persistence) and then against `thelca worker` and `thelca logger`
with their default settings (SQLite store, publisher confirms, idempotency,
logger with fsync, every line in the hash chain) and the logger's checkpoints
signed with a key made for the run, each on a prefix of its own. It prints
both sets of figures, the ratios and the targets, `thelca audit` of the run's
log, and exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pika
import pika.exceptions

URL = os.environ.get("THELCA_AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
HERE = Path(__file__).resolve().parent
HEADERS = {"Authorization": "Bearer bench"}


@dataclass
class Run:
    commands: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.commands / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000


class Load:
    """Publishes commands with at most `window` awaiting their reply."""

    def __init__(self, prefix: str) -> None:
        self.queue = f"{prefix}.commands"
        self.connection = pika.BlockingConnection(pika.URLParameters(URL))
        self.channel = self.connection.channel()
        self.channel.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)
        self.pending: dict[str, float] = {}
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.items: list[dict[str, Any]] = []

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        started = self.pending.pop(properties.correlation_id)
        self.latencies.append(time.perf_counter() - started)
        reply = orjson.loads(body)
        self.statuses[reply["status"]] = self.statuses.get(reply["status"], 0) + 1
        if reply.get("item") and len(self.items) < 10_000:
            self.items.append(reply["item"])

    def run(self, count: int, window: int, body: Callable[[], bytes],
            on_progress: Callable[[int], None] | None = None) -> Run:
        self.latencies, self.statuses = [], {}
        sent = 0
        started = time.perf_counter()
        while sent < count or self.pending:
            while sent < count and len(self.pending) < window:
                correlation_id = uuid.uuid4().hex
                self.pending[correlation_id] = time.perf_counter()
                self.channel.basic_publish("", self.queue, body(), pika.BasicProperties(
                    reply_to="amq.rabbitmq.reply-to", correlation_id=correlation_id,
                    message_id=correlation_id, headers=HEADERS, delivery_mode=2))
                sent += 1
                if on_progress is not None and sent % 1000 == 0:
                    on_progress(sent)
            self.connection.process_data_events(time_limit=None)
        return Run(count, time.perf_counter() - started, self.latencies, self.statuses)

    def close(self) -> None:
        self.connection.close()


def creates() -> bytes:
    return orjson.dumps({"command": "create", "item": {"properties": {"type": "STORY"}}})


def mix(load: Load) -> Callable[[], bytes]:
    """1 create : 1 read : 2 updates, reads and updates on items created before."""
    rng = random.Random(1)
    step = [0]

    def body() -> bytes:
        step[0] += 1
        kind = step[0] % 4
        if kind == 0 or not load.items:
            return creates()
        item = rng.choice(load.items)
        if kind == 1:
            return orjson.dumps({"command": "read", "id": item["id"]})
        return orjson.dumps({"command": "update", "id": item["id"],
                             "item": {**item, "properties": {"n": step[0]}}})

    return body


# ---------------------------------------------------------------- processes


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(args, env=env, stdout=out, stderr=out)


def wait_consumed(queue: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        connection = pika.BlockingConnection(pika.URLParameters(URL))
        try:
            if connection.channel().queue_declare(queue, passive=True).method.consumer_count:
                return
        except pika.exceptions.ChannelClosedByBroker:
            pass
        finally:
            if connection.is_open:
                connection.close()
        time.sleep(0.2)
    raise SystemExit(f"nothing consumes {queue}")


def stop(processes: list[subprocess.Popen[bytes]], sig: int = signal.SIGTERM) -> None:
    for process in processes:
        process.send_signal(sig)
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def delete(prefix: str, queues: list[str], exchanges: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    for name in queues:
        connection.channel().queue_delete(f"{prefix}.{name}")
    for name in exchanges:
        connection.channel().exchange_delete(f"{prefix}.{name}")
    connection.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def lines_in(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as file:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))


def quorum_echo(count: int) -> Run:
    """The broker alone: a persistent command through a durable quorum queue and back.

    thelca's commands queue is a quorum queue (the contract's default, and what
    dead-letters poison after 20 deliveries); the floor's is a transient classic
    queue. This measures what that difference costs at window 1, with no thelca.
    """
    queue = f"bench-echo-{uuid.uuid4().hex[:6]}"
    ready = threading.Event()

    def echo() -> None:
        connection = pika.BlockingConnection(pika.URLParameters(URL))
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            ch.basic_publish("", properties.reply_to, b'{"status": 200}',
                             pika.BasicProperties(correlation_id=properties.correlation_id))
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(queue, on_message)
        ready.set()
        while not stopping.is_set():
            connection.process_data_events(time_limit=0.1)
        connection.close()

    stopping = threading.Event()
    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    ready.wait(30)
    load = Load("unused")
    load.queue = queue
    try:
        load.run(200, 1, creates)
        return load.run(count, 1, creates)
    finally:
        stopping.set()
        thread.join(timeout=10)
        load.channel.queue_delete(queue)
        load.close()


# ---------------------------------------------------------------- scenarios


@dataclass
class Figures:
    creates: Run
    mix: Run
    latency: Run
    log_lag: float | None = None
    rss: list[float] = field(default_factory=list)
    audit: subprocess.CompletedProcess[str] | None = None


def scenarios(prefix: str, log: Path, n: int, window: int, latency_n: int) -> Figures:
    load = Load(prefix)
    try:
        load.run(min(2000, n), window, creates)  # warm up
        expected = lines_in(log) + n
        create_run = load.run(n, window, creates)
        finished = time.perf_counter()
        while lines_in(log) < expected and time.perf_counter() - finished < 30:
            time.sleep(0.01)
        lag = time.perf_counter() - finished
        mix_run = load.run(n, window, mix(load))
        latency_run = load.run(latency_n, 1, creates)
    finally:
        load.close()
    return Figures(create_run, mix_run, latency_run, lag)


def memory_run(prefix: str, pid: int, count: int) -> list[float]:
    load = Load(prefix)
    samples: list[float] = []
    try:
        load.run(count, 200, creates,
                 on_progress=lambda sent: samples.append(rss_mib(pid))
                 if sent % (count // 10) == 0 else None)
    finally:
        load.close()
    return samples


def measure_floor(work: Path, n: int, window: int, latency_n: int) -> Figures:
    prefix = f"bench-floor-{uuid.uuid4().hex[:6]}"
    log = work / "floor-events.log"
    env = dict(os.environ)
    processes = [
        start([sys.executable, str(HERE / "floor.py"), "worker", prefix], env,
              work / "floor-worker.out"),
        start([sys.executable, str(HERE / "floor.py"), "logger", prefix, str(log)], env,
              work / "floor-logger.out"),
    ]
    try:
        wait_consumed(f"{prefix}.commands")
        wait_consumed(f"{prefix}.events.log")
        return scenarios(prefix, log, n, window, latency_n)
    finally:
        stop(processes, signal.SIGINT)  # the floor stops on KeyboardInterrupt
        delete(prefix, ["commands", "events.log"], ["events"])


def measure_thelca(work: Path, n: int, window: int, latency_n: int,
                   memory_n: int) -> Figures:
    prefix = f"bench-thelca-{uuid.uuid4().hex[:6]}"
    log = work / "thelca-events.log"
    public_key = signing_key(work)
    env = {**os.environ, "THELCA_PREFIX": prefix, "THELCA_AUTHORITY": "test-only",
           "THELCA_STORE": f"sqlite:///{work / 'thelca.db'}", "THELCA_EVENT_LOG": str(log),
           "THELCA_LOG_LEVEL": "WARNING", "THELCA_AMQP_URL": URL,
           "THELCA_LOG_SIGNING_KEY": str(work / "log-signing.pem")}
    thelca = [sys.executable, "-m", "thelca"]
    worker = start([*thelca, "worker"], env, work / "thelca-worker.out")
    logger = start([*thelca, "logger"], env, work / "thelca-logger.out")
    try:
        wait_consumed(f"{prefix}.commands")
        wait_consumed(f"{prefix}.events.log")
        figures = scenarios(prefix, log, n, window, latency_n)
        if memory_n:
            figures.rss = memory_run(prefix, worker.pid, memory_n)
    finally:
        stop([worker, logger])
        delete(prefix, ["commands", "events.log", "dead", "replay"],
               ["events", "dead", "checkpoints"])
    figures.audit = subprocess.run(
        [*thelca, "audit", "--log", str(log), "--public-key", str(public_key)],
        capture_output=True, text=True, check=False)
    return figures


def signing_key(work: Path) -> Path:
    """An Ed25519 key pair for the run's checkpoints: log-signing.pem and its public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    (work / "log-signing.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    public = work / "log-signing.pub.pem"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return public


# ---------------------------------------------------------------- report


def report(floor: Figures, ours: Figures, echo: Run, window: int) -> bool:
    rows: list[tuple[str, str, str, str, str, bool]] = []

    def rate_row(label: str, a: Run, b: Run) -> None:
        ratio = b.rate / a.rate
        rows.append((label, f"{a.rate:,.0f}/s", f"{b.rate:,.0f}/s", f"{ratio:.2f}x",
                     ">= 1.00x", ratio >= 1.0))

    rate_row(f"creates, window {window}", floor.creates, ours.creates)
    rate_row(f"create/read/update mix, window {window}", floor.mix, ours.mix)
    p50 = ours.latency.percentile(0.5) / floor.latency.percentile(0.5)
    rows.append(("p50 latency, window 1", f"{floor.latency.percentile(0.5):.2f} ms",
                 f"{ours.latency.percentile(0.5):.2f} ms", f"{p50:.2f}x", "<= 1.50x",
                 p50 <= 1.5))
    rows.append(("p50, a quorum queue alone (pika echo)", "",
                 f"{echo.percentile(0.5):.2f} ms", "", "", True))
    rows.append(("p99 latency, window 1", f"{floor.latency.percentile(0.99):.2f} ms",
                 f"{ours.latency.percentile(0.99):.2f} ms", "", "", True))
    rows.append((f"p99 latency, window {window}", f"{floor.creates.percentile(0.99):.1f} ms",
                 f"{ours.creates.percentile(0.99):.1f} ms", "", "", True))
    lag = ours.log_lag or 0.0
    rows.append(("log lag after the creates", f"{floor.log_lag or 0:.2f} s", f"{lag:.2f} s",
                 "", "< 1 s", lag < 1.0))
    if ours.audit is not None:
        said = ours.audit.stdout.strip().splitlines()[-1:] or [ours.audit.stderr.strip()]
        rows.append(("thelca audit of the run's log (signed)", "",
                     f"exit {ours.audit.returncode}: {said[0]}", "", "exit 0",
                     ours.audit.returncode == 0))
    if ours.rss:
        first, last = ours.rss[0], ours.rss[-1]
        growth = (last - first) / first
        rows.append((f"worker RSS over the memory run ({len(ours.rss)} samples)",
                     "", f"{first:.1f} -> {last:.1f} MiB", f"{growth:+.1%}", "flat (< +10%)",
                     growth < 0.10))
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    print(f"{'':{widths[0]}}  {'floor':>{widths[1]}}  {'thelca':>{widths[2]}}  "
          f"{'ratio':>{widths[3]}}  target")
    for label, a, b, ratio, target, ok in rows:
        verdict = ("ok" if ok else "MISSED") if target else ""
        print(f"{label:{widths[0]}}  {a:>{widths[1]}}  {b:>{widths[2]}}  {ratio:>{widths[3]}}  "
              f"{target} {verdict}")
    statuses = {**ours.creates.statuses, **ours.mix.statuses}
    print(f"thelca statuses seen: {dict(sorted(statuses.items()))}")
    if p50 > 1.5:
        broker = echo.percentile(0.5)
        print(f"p50 at window 1: {broker:.2f} ms of thelca's "
              f"{ours.latency.percentile(0.5):.2f} ms is the durable quorum commands queue "
              f"itself (a bare pika echo through one), against the floor's transient queue; "
              f"thelca's own share is {ours.latency.percentile(0.5) - broker:.2f} ms "
              f"(the store's fsynced commit, the event publish).")
    return all(row[5] for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=20_000,
                        help="commands per throughput scenario (default 20000)")
    parser.add_argument("--window", type=int, default=200,
                        help="outstanding requests in the throughput scenarios (default 200)")
    parser.add_argument("--latency-commands", type=int, default=2000,
                        help="commands sent one at a time for latency (default 2000)")
    parser.add_argument("--memory-commands", type=int, default=100_000,
                        help="commands of the memory run, 0 to skip (default 100000)")
    parser.add_argument("--quick", action="store_true",
                        help="5000 commands, 500 for latency, no memory run")
    args = parser.parse_args()
    if args.quick:
        args.commands, args.latency_commands, args.memory_commands = 5000, 500, 0
    with tempfile.TemporaryDirectory(prefix="thelca-bench-") as directory:
        work = Path(directory)
        started = time.monotonic()
        floor = measure_floor(work, args.commands, args.window, args.latency_commands)
        ours = measure_thelca(work, args.commands, args.window, args.latency_commands,
                              args.memory_commands)
        echo = quorum_echo(args.latency_commands)
        print(f"{os.cpu_count()} cores, {args.commands} commands per scenario, "
              f"{time.monotonic() - started:.0f} s in all")
        return 0 if report(floor, ours, echo, args.window) else 1


if __name__ == "__main__":
    sys.exit(main())
