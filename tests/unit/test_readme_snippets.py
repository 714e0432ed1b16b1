"""The README's Python snippets type-check under mypy --strict, as a user's code would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


def test_the_readme_has_a_blocking_an_asyncio_and_a_subscriber_snippet() -> None:
    blocks = python_blocks()
    assert any("Client(" in block and "create_many" in block for block in blocks)
    assert any("AsyncClient(" in block and "asyncio.gather" in block for block in blocks)
    assert any(".subscribe(" in block and "async for" in block for block in blocks)


def test_every_python_snippet_of_the_readme_passes_mypy_strict(tmp_path: Path) -> None:
    files = []
    for number, block in enumerate(python_blocks(), start=1):
        path = tmp_path / f"readme_snippet_{number}.py"
        path.write_text(block)
        files.append(str(path))
    assert files

    # The project's mypy settings (strict, and where thelca_client lives); each snippet is
    # a module of its own, as a user's script would be.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "--config-file", str(ROOT / "pyproject.toml"), *files],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
