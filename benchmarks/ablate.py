"""Run `thelca worker` with one guarantee taken away, to measure what that guarantee costs.

    python benchmarks/ablate.py no-events worker     # any `thelca` arguments after the first

For latency_ladder.py's ablation rungs (`--ablations`) only: never a way to run
thelca. Each ablation removes one piece of work from a command's path so that
the ladder, taking turns with the whole thelca, shows what that piece adds to
the p50 at window 1:

- no-events: the worker publishes no event (replies only) and acks each batch
  at once: what the event's publish, its quorum-queue write, its confirm and the
  logger's share of the broker cost the reply. (The events stay in the outbox.)
- no-fsync: the SQLite store with synchronous=OFF: what the commit's fsync costs.

The hooks wrap methods by name; when a name moves, this fails at start.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

ABLATIONS = ("no-events", "no-fsync")


def no_events() -> None:
    from thelca.amqp.publishing import PublishingSession

    original: Callable[..., Any] = PublishingSession._publish_batch

    def replies_only(self: Any, tags: list[int], publish: list[Any], received: list[float]) -> Any:
        return original(self, tags, [m for m in publish if not m.exchange], received)

    PublishingSession._publish_batch = replies_only  # type: ignore[method-assign,assignment]


def no_fsync() -> None:
    from thelca.stores.sqlite import store

    original: Callable[..., Any] = store._open_writer  # type: ignore[attr-defined]

    def unsynced(*args: Any, **kwargs: Any) -> Any:
        db = original(*args, **kwargs)
        db.execute("PRAGMA synchronous=OFF")
        return db

    store._open_writer = unsynced  # type: ignore[attr-defined]


def main() -> int:
    what, args = sys.argv[1], sys.argv[2:]
    if what not in ABLATIONS:
        raise SystemExit(f"ablate.py: {what!r} is none of {', '.join(ABLATIONS)}")
    {"no-events": no_events, "no-fsync": no_fsync}[what]()
    from thelca.cli.main import main as thelca

    return thelca(args)


if __name__ == "__main__":
    sys.exit(main())
