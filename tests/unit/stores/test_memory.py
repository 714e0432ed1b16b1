"""The memory store: the contract, and how open_store names it."""

from __future__ import annotations

import pytest

from tests.unit.stores.contract import StoreContract
from thelca.stores import ItemStore, open_store
from thelca.stores.memory import MemoryStore


class TestMemoryStore(StoreContract):
    """The contract against a new memory store."""

    def make_store(self) -> ItemStore:
        return MemoryStore()


@pytest.mark.parametrize("url", ["memory:", "memory://"])
def test_open_store_opens_memory_urls(url: str) -> None:
    store = open_store(url)
    assert isinstance(store, MemoryStore)
    assert store.url == "memory:"
    store.close()
