"""`restore` and `verify` take the log like every other setting, and verify shows progress."""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from thelca.cli.main import main
from thelca.stores.sqlite import SQLiteStore

ORIGINAL = Path(__file__).resolve().parents[1] / "data" / "original-server-event-log"


def test_restore_and_verify_take_the_log_from_thelca_event_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "events.log"
    shutil.copy(ORIGINAL, log)
    store = tmp_path / "restored.db"
    monkeypatch.setenv("THELCA_EVENT_LOG", str(log))

    assert main(["restore", "--store", f"sqlite:///{store}"]) == 0
    assert main(["verify", "--store", f"sqlite:///{store}"]) == 0

    out = capsys.readouterr().out
    assert "items restored:   4" in out
    assert "4 items in the log, 4 in the store, 0 differences" in out
    restored = SQLiteStore(store, writer=False)
    try:
        assert restored.count_items() == 4
    finally:
        restored.close()


def test_the_log_flag_still_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("THELCA_EVENT_LOG", str(tmp_path / "not-there.log"))
    store = tmp_path / "restored.db"

    assert main(["restore", "--log", str(ORIGINAL), "--store", f"sqlite:///{store}"]) == 0
    assert main(["verify", "--event-log", str(ORIGINAL), "--store", f"sqlite:///{store}"]) == 0


@pytest.mark.parametrize("command", ["restore", "verify"])
def test_restore_and_verify_show_progress_on_a_terminal_and_not_in_a_pipe(
    tmp_path: Path, command: str
) -> None:
    store = f"sqlite:///{tmp_path / 'restored.db'}"
    subprocess.run([sys.executable, "-m", "thelca", "restore", "--log", str(ORIGINAL),
                    "--store", store], check=True, capture_output=True)
    args = [sys.executable, "-m", "thelca", command, "--log", str(ORIGINAL), "--store", store,
            *(["--force"] if command == "restore" else [])]

    terminal = _on_a_terminal(args)
    piped = subprocess.run(args, capture_output=True, text=True, check=True)

    assert f"{command}:".encode() in terminal  # the bar's description, on stderr
    assert b"B/s" in terminal or b"it/s" in terminal or b"%" in terminal
    assert f"{command}:" not in piped.stderr


def _on_a_terminal(args: list[str]) -> bytes:
    """What the command writes to stderr when stderr is a terminal (a pseudo-terminal)."""
    main_end, child_end = os.openpty()
    # A terminal of 24 lines of 100 columns: a new pseudo-terminal has 0 of each, in which
    # tqdm draws an empty bar.
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=child_end)
    finally:
        os.close(child_end)
    out = b""
    while True:
        try:
            chunk = os.read(main_end, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        out += chunk
    os.close(main_end)
    assert process.wait(timeout=60) == 0
    return out
