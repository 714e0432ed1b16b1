"""The rooms stay apart: who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "worker" / "thelca"
CLIENT = ROOT / "publisher" / "thelca_client"

# Each driver or library that talks to the outside, and the only rooms that may import it.
ROOMS: dict[str, tuple[Path, ...]] = {
    "pika": (WORKER / "amqp", CLIENT),
    "sqlite3": (WORKER / "stores" / "sqlite",),
    "psycopg": (WORKER / "stores" / "postgres",),
    "jwt": (WORKER / "authority", WORKER / "devkeys.py"),
    # and the audit trail's checkpoints, which are signed (Ed25519)
    "cryptography": (WORKER / "authority", WORKER / "devkeys.py", WORKER / "audit"),
}


def _imports(path: Path) -> set[str]:
    """Every module path imports, anywhere in it (inside functions too); for
    `from a.b import c` both a.b and a.b.c, since c may be a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _imports_any(path: Path, modules: set[str]) -> set[str]:
    """The imports of path that are one of modules or inside one of them."""
    return {name for name in _imports(path)
            if any(name == module or name.startswith(f"{module}.") for module in modules)}


def _modules(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.py"))


def _in(path: Path, rooms: tuple[Path, ...]) -> bool:
    return any(path == room or path.is_relative_to(room) for room in rooms)


@pytest.mark.parametrize("path", _modules(WORKER) + _modules(CLIENT),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_each_driver_is_imported_only_in_its_room(path: Path) -> None:
    strays = {library for library, rooms in ROOMS.items()
              if not _in(path, rooms) and _imports_any(path, {library})}
    assert not strays, f"{path.relative_to(ROOT)} imports {sorted(strays)}: see ROOMS"


def test_the_rooms_hold_what_they_are_said_to() -> None:
    """Each room imports its library (else a rename would leave ROOMS checking nothing)."""
    for library, rooms in ROOMS.items():
        files = [p for room in rooms for p in ([room] if room.is_file() else _modules(room))]
        assert files, f"{library}: no file in {rooms}"
        assert any(_imports_any(p, {library}) for p in files), f"{library} is not in {rooms}"


@pytest.mark.parametrize("path", _modules(WORKER / "domain"), ids=lambda p: p.name)
def test_the_domain_has_no_broker_no_sql_and_no_wiring(path: Path) -> None:
    forbidden = {"pika", "sqlite3", "psycopg", "jwt", "cryptography", "thelca.amqp",
                 "thelca.roles", "thelca.bootstrap", "thelca.cli", "thelca.stores.sqlite",
                 "thelca.stores.memory", "thelca.stores.postgres", "thelca.authority.jwt",
                 "thelca.authority.test_only"}
    assert not _imports_any(path, forbidden)
    # The stores' interface (thelca.stores.base) is the domain's; open_store is wiring.
    assert "thelca.stores" not in _imports(path)


@pytest.mark.parametrize("path", _modules(CLIENT), ids=lambda p: p.name)
def test_the_client_needs_nothing_from_the_server(path: Path) -> None:
    assert not _imports_any(path, {"thelca"})


@pytest.mark.parametrize("path", _modules(WORKER / "stores"), ids=lambda p: p.name)
def test_stores_know_nothing_of_the_broker_the_roles_or_the_domain_service(path: Path) -> None:
    assert not _imports_any(path, {"pika", "thelca.amqp", "thelca.roles",
                                   "thelca.domain.service"})
