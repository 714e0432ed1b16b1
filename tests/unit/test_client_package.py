"""thelca-client installs alone: `pip install ./publisher` into a fresh virtual environment
brings pika and orjson, and the client imports with nothing of the server there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("thelca", "psycopg", "jwt", "cryptography", "prometheus_client", "tqdm",
               "pythonjsonlogger")

CHECK = f"""
import importlib.metadata, importlib.util, sys
import thelca_client
from thelca_client import AsyncClient, Client, ItemReply, Subscription
from thelca_client.contract import Names
assert thelca_client.__file__.startswith(sys.prefix), thelca_client.__file__
present = [name for name in {SERVER_ONLY!r} if importlib.util.find_spec(name) is not None]
assert not present, f"server dependencies installed: {{present}}"
requires = sorted(r.split(">")[0].split("<")[0].split("=")[0].strip()
                  for r in importlib.metadata.requires("thelca-client") or [])
assert requires == ["orjson", "pika"], requires
assert importlib.util.find_spec("thelca_client.py") is None
import pathlib
assert (pathlib.Path(thelca_client.__file__).parent / "py.typed").exists(), "no py.typed"
print("ok", Names("x").commands, AsyncClient.__name__, Client.__name__)
"""


def test_the_client_installs_alone_and_imports_without_the_server(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    # Built from a copy, so that the build leaves nothing in the checkout.
    source = tmp_path / "publisher"
    shutil.copytree(ROOT / "publisher", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    # This environment's pip installs into the new one; pika and orjson come from the
    # same index (and cache) as every other install here.
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, timeout=600, check=False)
    assert install.returncode == 0, install.stdout + install.stderr

    # Without PYTHONPATH: one naming a checkout's worker/ (as a worktree's runs do) would
    # let the server in, and the check would no longer be of the package alone.
    alone = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    checked = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True,
                             cwd=tmp_path, timeout=120, check=False, env=alone)

    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "ok x.commands AsyncClient Client"
