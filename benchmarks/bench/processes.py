"""Child processes and broker objects of a run: start, wait for, stop, delete, measure."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pika
import pika.exceptions

from bench.load import URL


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    sigint_not_ignored()
    out = open(log, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(args, env=env, stdout=out, stderr=out)


def sigint_not_ignored() -> None:
    """Take SIGINT back if this run was started with it ignored, so children get it too.

    A shell without job control starts a background command (`... &`) with SIGINT
    ignored, and children inherit an ignored signal: the scripts, which stop on
    SIGINT, then went on until killed a minute later, each. A handled signal is
    reset to its default in a child, which Python then takes as KeyboardInterrupt.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def wait_consumed(queue: str, consumers: int = 1) -> None:
    """Wait until `consumers` consume `queue` (its declarer has started)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        connection = pika.BlockingConnection(pika.URLParameters(URL))
        try:
            found = connection.channel().queue_declare(queue, passive=True).method
            if found.consumer_count >= consumers:
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
        if process.poll() is None:
            process.send_signal(sig)
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


def load_average() -> str:
    """The machine's load average over 1, 5 and 15 minutes, as /proc/loadavg says it."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
