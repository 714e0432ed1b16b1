"""The supervisor's children run the installed thelca, wherever `thelca run` is started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from thelca import __version__
from thelca.supervisor import child_command

SHADOW = "a thelca/ directory in the current folder ran instead of the installed package"


def _shadowing_folder(tmp_path: Path) -> Path:
    """A folder holding a `thelca/` package of its own, as a clone of the project would."""
    package = tmp_path / "thelca"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(f"import sys\nprint({SHADOW!r})\nsys.exit(7)\n")
    return tmp_path


def test_a_thelca_folder_in_the_current_directory_does_not_shadow_the_children(
    tmp_path: Path,
) -> None:
    folder = _shadowing_folder(tmp_path)
    child = subprocess.run(child_command(["--version"]), cwd=folder, capture_output=True,
                           text=True, timeout=60, check=False)
    assert child.returncode == 0, child.stdout + child.stderr
    assert child.stdout.strip() == f"thelca {__version__}"


def test_without_the_guard_the_folder_would_shadow_them(tmp_path: Path) -> None:
    """The folder above does shadow a plain `python -m thelca`: what the guard is for."""
    folder = _shadowing_folder(tmp_path)
    plain = subprocess.run([sys.executable, "-m", "thelca", "--version"], cwd=folder,
                           capture_output=True, text=True, timeout=60, check=False)
    assert plain.returncode == 7 and SHADOW in plain.stdout
