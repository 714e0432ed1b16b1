"""The rounds of a run: every system in turn, so that a neighbour's drift falls on all alike."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from bench.load import Load, Run, creates, pooled, run_once
from bench.processes import lines_in, rss_mib
from bench.systems import LATENCY_ONLY, System

ROUNDS = 2  # each throughput figure is the best of these
WARM_UP = 2000
LAG_LIMIT = 30.0  # seconds to wait for a log to catch up before giving up


@dataclass
class Figures:
    """What a run measured of one system."""

    creates: list[Run] = field(default_factory=list)
    mix: list[Run] = field(default_factory=list)
    latency: list[Run] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)

    @property
    def best_creates(self) -> Run | None:
        """The better round of creates; None for a system measured at window 1 only."""
        return max(self.creates, key=lambda run: run.rate, default=None)

    @property
    def best_mix(self) -> Run | None:
        return max(self.mix, key=lambda run: run.rate, default=None)

    @property
    def one_at_a_time(self) -> Run:
        return pooled(self.latency)

    @property
    def statuses(self) -> dict[int, int]:
        return pooled([*self.creates, *self.mix, *self.latency]).statuses


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure(systems: list[System], commands: int, window: int, latency_commands: int,
            memory_commands: int) -> dict[str, Figures]:
    figures = {system.name: Figures() for system in systems}
    for system in systems:
        counted(system, run_once(system.prefix, min(WARM_UP, commands), window, "creates",
                                 system.items))
    busy = [system for system in systems if system.name not in LATENCY_ONLY]
    for round_ in range(1, ROUNDS + 1):
        for system in busy:
            run, lag = creates_and_lag(system, commands, window)
            figures[system.name].creates.append(run)
            if lag is not None:
                figures[system.name].lags.append(lag)
            say(f"round {round_}: {system.name} creates {run.rate:,.0f}/s")
        for system in busy:
            run = counted(system, run_once(system.prefix, commands, window, "mix", system.items))
            figures[system.name].mix.append(run)
            say(f"round {round_}: {system.name} mix {run.rate:,.0f}/s")
    for round_ in range(1, ROUNDS + 1):
        for system in systems:
            run = counted(system, run_once(system.prefix, max(1, latency_commands // ROUNDS),
                                           1, "creates"))
            figures[system.name].latency.append(run)
            say(f"round {round_}: {system.name} window 1 p50 {run.percentile(0.5):.2f} ms")
    watched = next((s for s in systems if s.worker_pid is not None), None)
    if memory_commands and watched is not None and watched.worker_pid is not None:
        figures[watched.name].rss = memory_run(watched.prefix, watched.worker_pid,
                                               memory_commands)
    return figures


def counted(system: System, run: Run) -> Run:
    """The run, its 200 replies counted as events the system's log should come to hold."""
    system.events += run.statuses.get(200, 0)
    return run


def creates_and_lag(system: System, commands: int, window: int) -> tuple[Run, float | None]:
    """A creates run, and how long after its last reply its log held every event."""
    run = counted(system, run_once(system.prefix, commands, window, "creates", system.items))
    if system.log is None:
        return run, None
    finished = time.perf_counter()
    while lines_in(system.log) < system.events and time.perf_counter() - finished < LAG_LIMIT:
        time.sleep(0.01)
    return run, time.perf_counter() - finished


def memory_run(prefix: str, pid: int, count: int) -> list[float]:
    """The worker's RSS at each tenth of `count` creates at window 200."""
    load = Load(prefix)
    samples: list[float] = []
    step = max(1000, count // 10 // 1000 * 1000)

    def sample(sent: int) -> None:
        if sent % step == 0:
            samples.append(rss_mib(pid))

    try:
        load.run(count, 200, creates, on_progress=sample)
    finally:
        load.close()
    return samples
