"""Window-1 latency, rung by rung, in one run: where thelca's reply spends its time.

    python benchmarks/latency_ladder.py              # 2000 commands per system
    python benchmarks/latency_ladder.py --quick      # 300 per system
    python benchmarks/latency_ladder.py --only echo,floor,sqlite --no-trace
    python benchmarks/latency_ladder.py --baseline DIR   # also DIR's thelca, interleaved
    python benchmarks/latency_ladder.py --only echo,floor,sqlite --ablations --no-trace

One client sends creates one at a time (persistent, with a message_id, the
reply by direct reply-to) to each system in turn, in rounds, so that the
shared machine's drift hits all alike. The rungs:

- echo: a bare pika consumer of a durable quorum queue that replies and
  acks: the broker's own durable round trip, under which no worker on
  thelca's quorum commands queue can go;
- floor: benchmarks/floor.py, the least pika code that honours the
  contract's happy path (a transient classic queue, no confirms, no store),
  which the issue's targets are relative to;
- guarded, guarded-pg: benchmarks/guarded.py, the floor's work with exactly
  thelca's guarantees (the durable quorum queue, the store's transaction with
  the processed-command record and the outbox, the event confirmed before the
  ack, the logger's fsync) and none of thelca's code: what the guarantees
  alone cost, so that what is left is thelca's own;
- sqlite, pg: `thelca worker` and `thelca logger` with their defaults, on a
  SQLite file and on a PostgreSQL schema of the run's own;
- with --baseline DIR (a checkout, say `git archive main | tar -x -C DIR`),
  sqlite-base and pg-base: DIR's thelca the same way, taking turns with this
  one, which is how a change is best judged on a shared machine;
- with --ablations, thelca with one piece of work taken away, to show what
  that piece costs the reply (benchmarks/ablate.py, untraced): sqlite-no-events
  (no event published, each batch acked at once), sqlite-no-fsync (SQLite's
  synchronous=OFF) and memory (the memory store: no database at all). These
  are measurements, not ways to run thelca; and guarded-no-event, the
  guarded floor publishing no event.

It prints p50, p90 and p99 of each, their ratios to the echo and the floor,
and the CPU time each system's processes spent per command in its own turns
(from /proc schedstat: it swings far less with the machine's load than the
timings do). Traced (the default), thelca's workers run under
latency_trace.py, and the ladder prints the median time (and the worker's
CPU time) of each stage of a command's path, from the client's publish to the
client's reply, and of the event's (written, confirmed, acked), with socket
writes and reads, transactions and psycopg waits per command (calls of its
Connection.wait, which are not round trips: benchmarks/pg_roundtrips.py
counts those);
--profile DIR also runs them under a CPU-time cProfile and prints where that
time went by package (benchmarks/profile_shares.py). Exit 1 when a target
is missed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pika
import pika.exceptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench.processes import sigint_not_ignored
from latency_stages import Sent, stages

URL = os.environ.get("THELCA_AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
POSTGRES = os.environ.get("THELCA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
HERE = Path(__file__).resolve().parent
BODY = orjson.dumps({"command": "create", "item": {"properties": {"type": "STORY"}}})
TARGETS = {"sqlite": 2.0, "pg": 2.5}  # thelca's p50 at most this many times the floor's
SYSTEMS = ("echo", "floor", "guarded", "sqlite", "guarded-pg", "pg")
GUARDED = ("guarded", "guarded-pg", "guarded-no-event")  # benchmarks/guarded.py, stopped by SIGINT
ABLATIONS = ("sqlite-no-events", "sqlite-no-fsync", "memory",  # with --ablations
             "guarded-no-event")
LABELS = {"echo": "echo through a quorum queue", "floor": "floor (benchmarks/floor.py)",
          "guarded": "guarded floor, SQLite", "guarded-pg": "guarded floor, PostgreSQL",
          "guarded-no-event": "guarded floor, SQLite, no event",
          "sqlite": "thelca, SQLite", "pg": "thelca, PostgreSQL",
          "sqlite-no-events": "thelca, SQLite, no events", "sqlite-no-fsync":
          "thelca, SQLite, no fsync", "memory": "thelca, memory store",
          "sqlite-base": "baseline thelca, SQLite", "pg-base": "baseline thelca, PostgreSQL"}


@dataclass
class System:
    """Processes that answer `queue`, and what the client saw of them."""

    name: str
    queue: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)  # what each process is
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds in its turns, by role
    sent: list[Sent] = field(default_factory=list)
    trace: Path | None = None
    cleanup: list[Any] = field(default_factory=list)

    def ms(self, share: float) -> float:
        ordered = sorted(s.replied - s.sent for s in self.sent)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000


class Client:
    """Sends one create at a time and waits for its reply."""

    def __init__(self) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(URL))
        self.channel = self.connection.channel()
        self.channel.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)
        self.replied: dict[str, float] = {}

    def _on_reply(self, _channel: Any, _method: Any, properties: Any, _body: bytes) -> None:
        self.replied[properties.correlation_id] = time.monotonic()

    def one(self, queue: str) -> Sent:
        message_id = uuid.uuid4().hex
        sent = time.monotonic()
        self.channel.basic_publish("", queue, BODY, pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id=message_id, message_id=message_id,
            headers={"Authorization": "Bearer ladder"}, delivery_mode=2))
        while message_id not in self.replied:
            self.connection.process_data_events(time_limit=None)
        return Sent(message_id, sent, self.replied.pop(message_id))


# ---------------------------------------------------------------- the systems


def echo(queue: str) -> None:
    """The echo's process: reply to each message of a durable quorum queue, then ack it."""
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})

    def on_message(ch: Any, method: Any, properties: Any, _body: bytes) -> None:
        ch.basic_publish("", properties.reply_to, b'{"status": 200}',
                         pika.BasicProperties(correlation_id=properties.correlation_id))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_message)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        channel.queue_delete(queue)


def start(name: str, work: Path, trace: bool, baseline: Path | None,
          profile: Path | None) -> System:
    prefix = f"ladder-{name}-{uuid.uuid4().hex[:6]}"
    out = open(work / f"{name}.out", "ab")  # noqa: SIM115 - the children own it
    python = sys.executable

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        sigint_not_ignored()
        return subprocess.Popen([python, *args], env=env, stdout=out, stderr=out)

    if name == "echo":
        system = System(name, prefix)
        system.processes.append(run(__file__, "echo", prefix))
        system.roles.append("echo")
        return system
    system = System(name, f"{prefix}.commands")
    if name == "floor":
        system.processes += [run(str(HERE / "floor.py"), "worker", prefix),
                             run(str(HERE / "floor.py"), "logger", prefix,
                                 str(work / "floor.log"))]
        system.roles += ["worker", "logger"]
        system.cleanup.append(("queues", [f"{prefix}.commands", f"{prefix}.events.log"],
                               [f"{prefix}.events"]))
        return system
    if name in GUARDED:
        return guarded(system, prefix, work, run)
    store = "memory:" if name == "memory" else f"sqlite:///{work / f'{name}.db'}"
    if name.startswith("pg"):
        schema = prefix.replace("-", "_")
        store = f"{POSTGRES}?schema={schema}"
        system.cleanup.append(("schema", schema))
    env = {**os.environ, "THELCA_PREFIX": prefix, "THELCA_AUTHORITY": "test-only",
           "THELCA_STORE": store, "THELCA_EVENT_LOG": str(work / f"{name}-events.log"),
           "THELCA_LOG_LEVEL": "WARNING", "THELCA_AMQP_URL": URL}
    if name.endswith("-base"):
        assert baseline is not None
        env["PYTHONPATH"] = f"{baseline / 'worker'}{os.pathsep}{baseline / 'publisher'}"
    worker = ["-m", "thelca", "worker"]
    if name.startswith("sqlite-no-"):  # an ablation rung: see benchmarks/ablate.py
        worker = [str(HERE / "ablate.py"), name.removeprefix("sqlite-"), "worker"]
    elif trace and name not in ABLATIONS:
        system.trace = work / f"{name}.trace"
        if profile is not None:
            env["LATENCY_TRACE_PROFILE"] = str(profile / f"{name}.prof")
        worker = [str(HERE / "latency_trace.py"), str(system.trace), "worker"]
    system.processes += [run(*worker, env=env), run("-m", "thelca", "logger", env=env)]
    system.roles += ["worker", "logger"]
    system.cleanup.append(("queues", [f"{prefix}.{q}" for q in (
        "commands", "events.log", "dead", "replay")],
        [f"{prefix}.{e}" for e in ("events", "dead", "checkpoints")]))
    return system


def guarded(system: System, prefix: str, work: Path,
            run: Callable[..., subprocess.Popen[bytes]]) -> System:
    """benchmarks/guarded.py's worker and logger, on a SQLite file or a PostgreSQL schema."""
    store = str(work / f"{system.name}.db")
    if system.name == "guarded-pg":
        schema = prefix.replace("-", "_")
        store = f"{POSTGRES}?schema={schema}"
        system.cleanup.append(("schema", schema))
    script = str(HERE / "guarded.py")
    no_event = ["--no-event"] if system.name == "guarded-no-event" else []
    system.processes += [run(script, "worker", prefix, store, *no_event),
                         run(script, "logger", prefix, str(work / f"{system.name}.log"))]
    system.roles += ["worker", "logger"]
    system.cleanup.append(("queues", [f"{prefix}.commands", f"{prefix}.events.log"],
                           [f"{prefix}.events", f"{prefix}.dead"]))
    return system


def wait_consumed(system: System) -> None:
    queues = [system.queue] + ([system.queue.replace(".commands", ".events.log")]
                               if system.queue.endswith(".commands") else [])
    deadline = time.monotonic() + 60
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        for queue in queues:
            while True:
                channel = connection.channel()
                try:
                    if channel.queue_declare(queue, passive=True).method.consumer_count:
                        channel.close()
                        break
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    pass
                if time.monotonic() > deadline or any(p.poll() is not None
                                                      for p in system.processes):
                    raise SystemExit(f"{system.name}: nothing consumes {queue} "
                                     "(see its .out file)")
                time.sleep(0.2)
    finally:
        connection.close()


def stop(system: System) -> None:
    for process in system.processes:
        # The scripts stop on SIGINT, thelca on SIGTERM.
        process.send_signal(2 if system.name in ("echo", "floor", *GUARDED) else 15)
    for process in system.processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    for step in system.cleanup:
        if step[0] == "queues":
            connection = pika.BlockingConnection(pika.URLParameters(URL))
            for queue in step[1]:
                connection.channel().queue_delete(queue)
            for exchange in step[2]:
                connection.channel().exchange_delete(exchange)
            connection.close()
        else:
            import psycopg

            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{step[1]}" CASCADE')


# ---------------------------------------------------------------- the run


def measure(systems: list[System], commands: int, rounds: int, warm_up: int) -> None:
    client = Client()
    try:
        for system in systems:
            for _ in range(warm_up):
                client.one(system.queue)
        per_round = max(1, commands // rounds)
        for number in range(rounds):
            turn = number % len(systems)
            for system in systems[turn:] + systems[:turn]:
                before = [cpu_seconds(p.pid) for p in system.processes]
                system.sent += [client.one(system.queue) for _ in range(per_round)]
                for role, process, was in zip(system.roles, system.processes, before,
                                              strict=True):
                    system.cpu[role] = system.cpu.get(role, 0.0) + cpu_seconds(process.pid) - was
    finally:
        client.connection.close()


def cpu_seconds(pid: int) -> float:
    """The CPU time of all of a process's threads, in seconds (nanoseconds from schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def report(systems: list[System]) -> bool:
    by_name = {s.name: s for s in systems}
    echo_p50 = by_name["echo"].ms(0.5) if "echo" in by_name else None
    floor_p50 = by_name["floor"].ms(0.5) if "floor" in by_name else None
    print(f"{'window 1, ms':30} {'p50':>6} {'p90':>6} {'p99':>6} {'x echo':>7} {'x floor':>8}"
          "  target")
    met = True
    for system in systems:
        p50 = system.ms(0.5)
        x_echo = f"{p50 / echo_p50:.2f}x" if echo_p50 else ""
        x_floor = f"{p50 / floor_p50:.2f}x" if floor_p50 else ""
        target = ""
        if system.name in TARGETS and floor_p50:
            ok = p50 / floor_p50 <= TARGETS[system.name]
            met = met and ok
            target = f"<= {TARGETS[system.name]:.2f}x {'ok' if ok else 'MISSED'}"
        elif system.name.endswith("-base"):
            ours = by_name.get(system.name.removesuffix("-base"))
            target = f"(this branch {ours.ms(0.5) / p50:.2f}x of it)" if ours else ""
        print(f"{LABELS[system.name]:30} {p50:6.2f} {system.ms(0.9):6.2f} {system.ms(0.99):6.2f} "
              f"{x_echo:>7} {x_floor:>8}  {target}")
    print("CPU per command (ms), in each system's own turns: " + "; ".join(
        f"{system.name} " + ", ".join(f"{role} {seconds / len(system.sent) * 1000:.3f}"
                                      for role, seconds in system.cpu.items())
        for system in systems if system.sent))
    for system in systems:
        if system.trace is not None and system.trace.exists():
            print()
            print(stages(LABELS[system.name], system.sent, orjson.loads(system.trace.read_bytes()),
                         echo_p50))
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=2000, help="per system (default 2000)")
    parser.add_argument("--rounds", type=int, default=10, help="turns each system takes")
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help=f"systems to run, of {','.join(SYSTEMS)}")
    parser.add_argument("--no-trace", dest="trace", action="store_false",
                        help="run `thelca worker` itself, without latency_trace.py")
    parser.add_argument("--baseline", type=Path,
                        help="a checkout whose thelca runs too, as sqlite-base and pg-base")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run the traced workers under cProfile too, into DIR/NAME.prof")
    parser.add_argument("--quick", action="store_true", help="300 commands per system")
    parser.add_argument("--ablations", action="store_true",
                        help="also thelca on SQLite with no events, with no fsync, and on the "
                             "memory store (benchmarks/ablate.py): what each of those costs")
    args = parser.parse_args()
    if args.quick:
        args.commands, args.rounds = 300, 5
    names = [n for n in SYSTEMS if n in args.only.split(",")]
    if args.baseline is not None:
        names += [f"{n}-base" for n in ("sqlite", "pg") if n in names]
    if args.ablations:
        names += list(ABLATIONS)
    with tempfile.TemporaryDirectory(prefix="thelca-ladder-") as directory:
        work = Path(directory)
        systems: list[System] = []
        try:
            for name in names:
                systems.append(start(name, work, args.trace, args.baseline, args.profile))
            for system in systems:
                wait_consumed(system)
            started = time.monotonic()
            measure(systems, args.commands, args.rounds, warm_up=min(200, args.commands // 3))
            seconds = time.monotonic() - started
        finally:
            for system in systems:
                stop(system)
        with open("/proc/loadavg") as loadavg:
            load = loadavg.read().split()[:3]
        print(f"{os.cpu_count()} cores, load {' '.join(load)}, {args.commands} commands per "
              f"system in {args.rounds} rounds, {seconds:.0f} s"
              f"{', thelca traced' if args.trace else ''}")
        met = report(systems)
        if args.profile is not None:  # where each traced worker's CPU went, by package
            for system in systems:
                profile = args.profile / f"{system.name}.prof"
                if profile.exists():
                    print()
                    subprocess.run([sys.executable, str(HERE / "profile_shares.py"), str(profile),
                                    "--commands", str(len(system.sent))], check=False)
        return 0 if met else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "echo":
        echo(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
