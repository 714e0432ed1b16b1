"""What a restore (or the fold under a verify) found: counts, skipped kinds, problem lines."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

AFTER_UNTIL = "after --until"  # how events later than --until are counted among the skipped


class Problem(NamedTuple):
    """A line restore could not use, and why."""

    file: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.why}" if self.file else f"{self.line}: {self.why}"


@dataclass
class RestoreReport:
    """What a fold of the log did: lines read, events applied, lines skipped and why not."""

    lines: int = 0
    applied: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    items: int = 0
    links: int = 0
    # The hash chain, as restore walked it: where it breaks (the first few), how many
    # times, and how many lines carried none (an original server's, before it starts).
    chain_breaks: list[str] = field(default_factory=list)
    chain_break_count: int = 0
    chain_lines: int = 0  # the complete lines walked
    unchained: int = 0

    def summary(self) -> str:
        parts = [f"{self.lines} lines read", f"{self.applied} events applied"]
        parts += [f"{count} {kind!r} skipped" for kind, count in sorted(self.skipped.items())]
        parts.append(f"{len(self.problems)} problem lines")
        parts.append(f"{self.items} items restored")
        parts.append(f"{self.links} links restored")
        return ", ".join(parts)

    def describe(
        self, items_label: str = "items restored", links_label: str = "links restored"
    ) -> list[str]:
        """The report as lines of text for a person, problem lines not included."""
        text = [f"{'lines read:':<18}{self.lines}", f"{'events applied:':<18}{self.applied}"]
        if self.skipped:
            text.append(f"{'lines skipped:':<18}{sum(self.skipped.values())}")
            width = max(len(kind) for kind in self.skipped)
            text += [f"  {kind:<{width}}  {count}" for kind, count in sorted(
                self.skipped.items())]
        text.append(f"{'problem lines:':<18}{len(self.problems)}")
        text.append(f"{items_label + ':':<18}{self.items}")
        text.append(f"{links_label + ':':<18}{self.links}")
        return text

    def describe_chain(self) -> str:
        """The hash chain in a line: unbroken, broken (where first), or not there."""
        if self.chain_break_count:
            return (f"{'hash chain:':<18}BROKEN at {self.chain_break_count} places, the first "
                    f"at {self.chain_breaks[0]}")
        if self.unchained == self.chain_lines:
            return f"{'hash chain:':<18}none" + (" (an original server's log)"
                                                  if self.chain_lines else "")
        note = f" after {self.unchained} lines without one" if self.unchained else ""
        return f"{'hash chain:':<18}unbroken{note}"
