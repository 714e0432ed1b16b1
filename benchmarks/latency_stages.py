"""The stages of a command's path at window 1, from the client's times and a worker's trace.

latency_trace.py notes (time, kind, detail, thread CPU time) in the worker;
the client knows when it published each command and when its reply came, on
the same clock. Every command's points are found in the notes after the
worker read it, and the median of each stage printed (and, inside the worker,
the CPU time it took, which swings less with the machine's load than the
time), with the socket writes and reads, the transactions and the psycopg
waits (not round trips), per command.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from typing import Any

Note = tuple[float, str, Any, float]
Point = tuple[float, float | None]  # when, and the worker thread's CPU time by then

# (what, from point, to point); the reply's path first, the event's after it.
REPLY_PATH = (
    ("broker: client publishes -> worker has it", "sent", "recv"),
    ("worker has it -> its batch starts", "recv", "flush"),
    ("batch starts -> transaction open", "flush", "body"),
    ("the command's work in the transaction", "body", "commit"),
    ("commit (the store's fsync)", "commit", "committed"),
    ("committed -> reply written to the socket", "committed", "reply_send"),
    ("broker: reply written -> client has it", "reply_send", "replied"),
)
EVENT_PATH = (
    ("committed -> event written to the socket", "committed", "event_send"),
    ("broker: event written -> confirmed", "event_send", "confirm"),
    ("confirmed -> ack written", "confirm", "ack_send"),
)


@dataclass(frozen=True)
class Sent:
    """One command as the client saw it (time.monotonic)."""

    message_id: str
    sent: float
    replied: float


def points(sent: Sent, notes: list[Note], at: int) -> dict[str, Point]:
    """The points along one command's path; notes[at] is the worker reading it."""
    found: dict[str, Point] = {"sent": (sent.sent, None), "replied": (sent.replied, None),
                               "recv": (notes[at][0], notes[at][3])}
    main_fd = next((n[2] for n in reversed(notes[:at]) if n[1] == "read"), None)
    wanted = ["flush", "body", "commit", "committed", "reply", "reply_send", "event_send",
              "confirm", "ack", "ack_send"]
    for when, kind, detail, cpu in notes[at + 1:]:
        if not wanted:
            break
        if kind == "recv" and "committed" not in found:
            break  # another command: this one's batch never ran alone
        name = kind
        if kind == "send" and "committed" in found:
            name = "event_send" if detail == main_fd else "reply_send"
            if name == "event_send" and "ack" in found:
                name = "ack_send"
        if name in wanted and _in_order(name, found):
            found[name] = (when, cpu)
            wanted.remove(name)
    return found


def _in_order(name: str, found: dict[str, Point]) -> bool:
    """Whether the point before `name` on its path was seen already."""
    before = {"body": "flush", "commit": "body", "committed": "commit", "reply": "committed",
              "reply_send": "reply", "event_send": "committed", "confirm": "event_send",
              "ack": "confirm", "ack_send": "ack"}
    return name not in before or before[name] in found


def stages(label: str, sent: list[Sent], notes: list[Note], echo_p50: float | None) -> str:
    """The medians of each stage, in ms, and the counts per command, as lines to print."""
    notes = [(n[0], n[1], n[2], n[3]) for n in notes]
    at = {n[2]: i for i, n in enumerate(notes) if n[1] == "recv"}
    paths = [points(s, notes, at[s.message_id]) for s in sent if s.message_id in at]
    lines = [f"{label}: where a command's time goes (medians over {len(paths)} commands, ms)",
             f"  {'':45} {'time':>6}   {'p90':>6}   {'CPU':>6}"]
    total = 0.0
    for what, start, end in (*REPLY_PATH, *EVENT_PATH):
        spans = [p[end][0] - p[start][0] for p in paths if start in p and end in p]
        if not spans:
            lines.append(f"  {what:45} (not seen)")
            continue
        median = statistics.median(spans) * 1000
        if (what, start, end) in REPLY_PATH:
            total += median
        cpus = [p[end][1] - p[start][1] for p in paths  # type: ignore[operator]
                if start in p and end in p and p[start][1] is not None and p[end][1] is not None]
        cpu = f"{statistics.median(cpus) * 1000:6.3f}" if cpus else ""
        lines.append(f"  {what:45} {median:6.3f}   {_p90(spans) * 1000:6.3f}   {cpu:>6}")
        if end == "replied":
            whole = statistics.median(s.replied - s.sent for s in sent) * 1000
            lines.append(f"  {'= the reply path (sum of medians)':45} {total:6.3f}   "
                         f"(p50 of the whole {whole:.3f}"
                         + (f"; the echo's {echo_p50:.3f})" if echo_p50 else ")"))
    lines.append("  per command: " + _counts(sent, notes, at))
    return "\n".join(lines)


def _p90(spans: list[float]) -> float:
    ordered = sorted(spans)
    return ordered[int(0.9 * (len(ordered) - 1))]


def _counts(sent: list[Sent], notes: list[Note], at: dict[Any, int]) -> str:
    """Socket writes and reads, transactions, confirms, acks, psycopg waits (calls of its
    Connection.wait, not round trips: benchmarks/pg_roundtrips.py counts those) and the
    worker thread's CPU time per command, over the measured span."""
    measured = sorted(at[s.message_id] for s in sent if s.message_id in at)
    if len(measured) < 2:
        return "(too few commands)"
    span = notes[measured[0]:measured[-1]]
    per = len(measured) - 1
    count = {kind: sum(1 for n in span if n[1] == kind) / per
             for kind in ("send", "read", "begin", "confirm", "reply_confirm", "ack", "pg_wait")}
    cycles = [notes[b][3] - notes[a][3] for a, b in itertools.pairwise(measured)]
    return (f"{count['send']:.1f} socket writes, {count['read']:.1f} socket reads, "
            f"{count['begin']:.2f} transactions, {count['confirm']:.2f} event confirms, "
            f"{count['reply_confirm']:.2f} reply confirms, {count['ack']:.2f} acks, "
            f"{count['pg_wait']:.1f} psycopg waits; "
            f"the worker's loop thread {statistics.median(cycles) * 1000:.3f} ms CPU "
            "(median from one command to the next)")
