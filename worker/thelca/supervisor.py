"""A small supervisor: run thelca subcommands as child processes and keep them running.

`thelca run` and `thelca worker --processes N` use it. A child that exits is
started again (after a pause that grows with its restarts in the last
minute); SIGTERM or Ctrl-C is passed on to every child once, and the
supervisor returns when all have stopped. A second signal passes the signal on
again, which makes each child exit at once, and exits.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("thelca")

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL = 0.2  # seconds between looks at the children
WINDOW = 60.0  # restarts within this many seconds slow the next one down
MAX_PAUSE = 30.0


@dataclass
class _Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)
    start_at: float = 0.0
    signalled: bool = False


def supervise(children: Mapping[str, Sequence[str]], env: Mapping[str, str]) -> int:
    """Run each `thelca ARGV...` child until a signal; return 0 once all have stopped."""
    kids = [_Child(name, list(argv)) for name, argv in children.items()]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            for kid in kids:  # a second signal: every child exits at once, and so do we
                if kid.process is not None and kid.process.poll() is None:
                    kid.process.send_signal(signal.SIGTERM)
            os._exit(128 + signum)
        stopping = True
        log.info("stopping %s", ", ".join(kid.name for kid in kids))

    # Handlers first: a signal while the children start must still reach them all.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        if stopping:
            # Signalled here rather than in the handler, so that a child started while
            # the signal arrived is not missed.
            for kid in kids:
                if kid.process is not None and kid.process.poll() is None and not kid.signalled:
                    kid.process.send_signal(signal.SIGTERM)
                    kid.signalled = True
            if all(kid.process is None or kid.process.poll() is not None for kid in kids):
                return 0
        else:
            for kid in kids:
                _look_after(kid, env)
        time.sleep(POLL)


def _look_after(kid: _Child, env: Mapping[str, str]) -> None:
    now = time.monotonic()
    if kid.process is None:
        if now >= kid.start_at:
            _start(kid, env)
        return
    code = kid.process.poll()
    if code is None:
        return
    kid.process = None
    kid.restarts = [t for t in kid.restarts if now - t < WINDOW] + [now]
    pause = min(MAX_PAUSE, float(len(kid.restarts)))
    kid.start_at = now + pause
    log.error("%s exited with %s; restarting it in %.0fs (%d restarts in the last minute)",
              kid.name, code, pause, len(kid.restarts) - 1)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the supervisor dies (even by SIGKILL), on Linux.

    Otherwise an orphaned worker goes on consuming and holds the SQLite lock, and
    the next supervisor's worker cannot start.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_command(argv: Sequence[str]) -> list[str]:
    """The command line of a child running `thelca ARGV...` with this interpreter.

    `-P` keeps the current directory off the child's sys.path: `python -m thelca`
    started in a folder holding a `thelca/` directory (a clone, say) would import
    that instead of the installed package, and crash-loop if it is not the same.
    """
    return [sys.executable, "-P", "-m", "thelca", *argv]


def _start(kid: _Child, env: Mapping[str, str]) -> None:
    # In a process group of its own a child does not get the terminal's Ctrl-C
    # directly; the supervisor forwards one SIGTERM, so a single Ctrl-C stops gently.
    kid.process = subprocess.Popen(child_command(kid.argv), env=dict(env),
                                   process_group=0, preexec_fn=_die_with_parent)  # noqa: PLW1509 - no threads here
    log.info("started %s (pid %d)", kid.name, kid.process.pid)
