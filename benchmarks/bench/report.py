"""The run's table, its targets met or missed, and its figures as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bench.load import Run
from bench.measure import Figures
from bench.systems import LABELS, LATENCY_ONLY, THELCA_SYSTEMS, System

# The targets (issue 13): p50 at window 1 against the floor's, at most;
# creates/s at window 200 against the floor's, at least.
P50_AT_MOST = {"sqlite": 2.0, "pg1": 2.5, "pg2": 2.5}
CREATES_AT_LEAST = {"sqlite": 1.0, "pg1": 0.8, "pg2": 1.0}
MIX_AT_LEAST = {"sqlite": 1.0}
CEILING_MOONSHOT = 0.9  # thelca's share of the ceiling: reported, not held
LAG_UNDER = 1.0  # seconds for the log to hold every event after the last reply
RSS_GROWTH_UNDER = 0.10


@dataclass(frozen=True)
class Target:
    label: str
    figure: str
    wanted: str
    met: bool | None  # None: reported, not held to

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "(reported)"}[self.met]


def ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs else float("nan")


def rate(run: Run | None) -> float:
    """A throughput run's rate; nan for a system measured at window 1 only."""
    return run.rate if run is not None else float("nan")


def per_second(run: Run | None) -> str:
    return f"{run.rate:,.0f}" if run is not None else ""


def rows(figures: dict[str, Figures]) -> list[list[str]]:
    """One row per system: the table's columns."""
    floor, ceiling = figures["floor"], figures.get("ceiling")
    table = [["system", "creates/s w200", "mix/s w200", "p50 w1", "p90 w1",
              "x floor (creates)", "x floor (p50)", "share of ceiling"]]
    for name, got in figures.items():
        p50 = got.one_at_a_time.percentile(0.5)
        busy = got.best_creates is not None
        share = (f"{ratio(rate(got.best_creates), rate(ceiling.best_creates)):.2f}"
                 if ceiling is not None and busy else "")
        table.append([
            LABELS[name], per_second(got.best_creates), per_second(got.best_mix),
            f"{p50:.2f} ms", f"{got.one_at_a_time.percentile(0.9):.2f} ms",
            f"{ratio(rate(got.best_creates), rate(floor.best_creates)):.2f}x" if busy else "",
            f"{ratio(p50, floor.one_at_a_time.percentile(0.5)):.2f}x", share])
    return table


def targets(figures: dict[str, Figures], systems: list[System],
            growth: dict[str, int] | None = None) -> list[Target]:
    """The issue's targets for the systems that ran, then the guarantees the run checks."""
    floor = figures["floor"]
    found: list[Target] = []
    for name in (n for n in THELCA_SYSTEMS if n in figures):
        got, label = figures[name], LABELS[name]
        p50 = ratio(got.one_at_a_time.percentile(0.5), floor.one_at_a_time.percentile(0.5))
        found.append(Target(f"{label}: p50 w1 / floor's", f"{p50:.2f}x",
                            f"<= {P50_AT_MOST[name]:.1f}x", p50 <= P50_AT_MOST[name]))
        creates = ratio(rate(got.best_creates), rate(floor.best_creates))
        found.append(Target(f"{label}: creates w200 / floor's", f"{creates:.2f}x",
                            f">= {CREATES_AT_LEAST[name]:.1f}x",
                            creates >= CREATES_AT_LEAST[name]))
        if name in MIX_AT_LEAST:
            mix = ratio(rate(got.best_mix), rate(floor.best_mix))
            found.append(Target(f"{label}: mix w200 / floor's", f"{mix:.2f}x",
                                f">= {MIX_AT_LEAST[name]:.1f}x", mix >= MIX_AT_LEAST[name]))
        if "ceiling" in figures:
            share = ratio(rate(got.best_creates), rate(figures["ceiling"].best_creates))
            found.append(Target(f"{label}: creates w200 / ceiling's", f"{share:.2f}",
                                f"moonshot {CEILING_MOONSHOT}", None))
        lag = max(got.lags, default=0.0)
        found.append(Target(f"{label}: log lag after the creates", f"{lag:.2f} s",
                            f"< {LAG_UNDER:.0f} s", lag < LAG_UNDER))
    for system in systems:
        if system.audit is not None:
            said = system.audit.stdout.strip().splitlines()[-1:] or [system.audit.stderr.strip()]
            found.append(Target(f"{system.label}: thelca audit of its log (signed)",
                                f"exit {system.audit.returncode}: {said[0][:60]}", "exit 0",
                                system.audit.returncode == 0))
    found.extend(memory_target(name, got) for name, got in figures.items() if got.rss)
    for store, code in (growth or {}).items():
        found.append(Target(f"store_growth.py --store {store}: flat after the first window",
                            f"exit {code}", "exit 0", code == 0))
    return found


def memory_target(name: str, got: Figures) -> Target:
    first, last = got.rss[0], got.rss[-1]
    growth = (last - first) / first
    return Target(f"{LABELS[name]}: worker RSS over the memory run ({len(got.rss)} samples)",
                  f"{first:.1f} -> {last:.1f} MiB ({growth:+.1%})",
                  f"< +{RSS_GROWTH_UNDER:.0%}", growth < RSS_GROWTH_UNDER)


def aligned(table: list[list[str]], left: tuple[int, ...] = (0,)) -> str:
    """Columns padded: those in `left` to the left, the others to the right."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i in left else cell.rjust(widths[i])
                  for i, cell in enumerate(row)).rstrip()
        for row in table)


def notes(figures: dict[str, Figures]) -> list[str]:
    """What the table alone does not say: where thelca's window-1 time goes, odd statuses."""
    lines = []
    if "echo" in figures:
        echo = figures["echo"].one_at_a_time.percentile(0.5)
        for name in (n for n in THELCA_SYSTEMS if n in figures):
            ours = figures[name].one_at_a_time.percentile(0.5)
            lines.append(f"{LABELS[name]}: p50 w1 {ours:.2f} ms = {echo:.2f} ms of the broker's "
                         f"durable round trip (the echo) + {ours - echo:.2f} ms of thelca")
    floor = figures["floor"].one_at_a_time.percentile(0.5)
    for guarded, measured in LATENCY_ONLY.items():
        if guarded not in figures:
            continue
        theirs = figures[guarded].one_at_a_time.percentile(0.5)
        for name in (n for n in measured if n in figures):
            ours = figures[name].one_at_a_time.percentile(0.5)
            lines.append(f"{LABELS[name]}: p50 w1 {ours:.2f} ms = {theirs:.2f} ms of its "
                         f"guarantees alone (the guarded floor, {ratio(theirs, floor):.2f}x the "
                         f"floor's) + {ours - theirs:.2f} ms of thelca's own "
                         f"({ratio(ours, theirs):.2f}x the guarded floor)")
    for name, got in figures.items():
        if set(got.statuses) - {200}:
            lines.append(f"{LABELS[name]}: statuses seen {dict(sorted(got.statuses.items()))}")
    return lines


def as_json(figures: dict[str, Figures], found: list[Target],
            meta: dict[str, Any]) -> dict[str, Any]:
    systems: dict[str, Any] = {}
    for name, got in figures.items():
        latency = got.one_at_a_time
        systems[name] = {
            "label": LABELS[name],
            "creates_per_s": [round(run.rate, 1) for run in got.creates],
            "mix_per_s": [round(run.rate, 1) for run in got.mix],
            "p50_ms_w1": round(latency.percentile(0.5), 3),
            "p90_ms_w1": round(latency.percentile(0.9), 3),
            "p99_ms_w1": round(latency.percentile(0.99), 3),
            "p99_ms_w200_creates": (round(got.best_creates.percentile(0.99), 3)
                                    if got.best_creates is not None else None),
            "log_lag_s": [round(lag, 3) for lag in got.lags],
            "rss_mib": got.rss,
            "statuses": {str(k): v for k, v in sorted(got.statuses.items())},
        }
    return {**meta, "systems": systems,
            "targets": [{**asdict(target), "verdict": target.verdict} for target in found]}
