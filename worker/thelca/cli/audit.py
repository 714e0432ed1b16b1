"""`thelca audit`: check that nobody edited, removed, inserted or reordered lines of the log."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from thelca.cli.common import EXIT_UNAVAILABLE
from thelca.errors import ConfigurationError
from thelca.settings import Settings


def add_audit_parser(sub: Any) -> None:
    """Add `audit` to the thelca parser."""
    audit = sub.add_parser(
        "audit", help="check the event log's hash chain and signed checkpoints",
        description="Walk the event log's hash chain (its numbered segments, then the live "
        "file), each line's prev against the hash of the line before, and hold it against the "
        "checkpoints. Finds an edited, inserted, removed or reordered line (and names the file "
        "and line where the chain breaks), a log cut short of a checkpoint, a line that no "
        "longer matches its checkpoint (a chain recomputed after an edit), and checkpoints "
        "that are malformed or not signed by a --public-key. A cut tail or a recomputed chain "
        "is caught only against checkpoints kept where whoever edited the log could not "
        "rewrite them (a witness's copy) and signed with a key they do not hold. "
        "Exit status: 0 intact, 1 altered, 2 usage, 3 the log, the checkpoints or a key file "
        "cannot be read.",
    )
    audit.add_argument("--log", metavar="FILE",
                       help="the event log (the live file's path; its segments FILE.000001 ... "
                       "are read first); default THELCA_EVENT_LOG, else thelca-events.log")
    audit.add_argument("--checkpoints", metavar="FILE",
                       help="the checkpoints to hold the log against (default FILE.checkpoints "
                       "beside the log); give a witness's copy to catch a rewritten one")
    audit.add_argument("--public-key", metavar="FILE", action="append", default=[],
                       help="a PEM Ed25519 public key (log-signing.pub.pem) that signs "
                       "checkpoints; once per key, for keys rotated over the log's life. With "
                       "one, every checkpoint must verify under one of them, and a missing "
                       "checkpoints file is an alteration, not a warning")
    audit.set_defaults(func=run_audit)


def run_audit(args: argparse.Namespace, settings: Settings) -> int:
    from thelca.audit.checkpoints import load_public_key
    from thelca.audit.verify import audit

    log = args.log or settings.event_log
    try:
        keys = [load_public_key(path) for path in args.public_key]
    except ConfigurationError as error:
        return _unavailable(str(error))
    try:
        with _progress() as progress:
            report = audit(log, args.checkpoints, keys, progress)
    except FileNotFoundError as error:
        if error.filename is None:  # LogSnapshot's own: neither a live file nor a segment
            return _unavailable(str(error))
        return _unavailable(f"cannot read {error.filename}: {error.strerror}")
    except OSError as error:
        return _unavailable(f"cannot read {error.filename or log}: {error.strerror or error}")
    print("\n".join(report.describe()))
    return report.exit_code


def _unavailable(why: str) -> int:
    print(f"thelca audit: {why}", file=sys.stderr)
    return EXIT_UNAVAILABLE


@contextmanager
def _progress() -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar over the log's bytes on a terminal (stderr); nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="audit",
              file=sys.stderr, leave=False) as bar:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield update
