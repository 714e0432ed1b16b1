"""The rooms stay apart: who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "worker" / "thelca"
CLIENT = ROOT / "publisher" / "thelca_client"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _modules(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(WORKER), ids=lambda p: str(p.relative_to(WORKER)))
def test_only_the_amqp_package_imports_pika_on_the_worker_side(path: Path) -> None:
    if path.is_relative_to(WORKER / "amqp"):
        return
    assert not any(name.split(".")[0] == "pika" for name in _imports(path))


@pytest.mark.parametrize("path", _modules(WORKER / "domain"), ids=lambda p: p.name)
def test_the_domain_has_no_broker_no_sql_and_no_wiring(path: Path) -> None:
    forbidden = {"pika", "sqlite3", "psycopg", "thelca.amqp", "thelca.roles",
                 "thelca.bootstrap", "thelca.stores.sqlite", "thelca.stores.memory"}
    imported = _imports(path)
    assert not {name for name in imported
                if name in forbidden or name.split(".")[0] in forbidden}


@pytest.mark.parametrize("path", _modules(CLIENT), ids=lambda p: p.name)
def test_the_client_needs_nothing_from_the_server(path: Path) -> None:
    assert not any(name.split(".")[0] == "thelca" for name in _imports(path))


@pytest.mark.parametrize("path", _modules(WORKER / "stores"), ids=lambda p: p.name)
def test_stores_know_nothing_of_the_broker(path: Path) -> None:
    assert not any(name.split(".")[0] == "pika" or name.startswith("thelca.amqp")
                   for name in _imports(path))
