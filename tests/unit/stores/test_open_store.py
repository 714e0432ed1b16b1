"""open_store: which URL opens which backend, and which URLs are refused."""

from __future__ import annotations

import pytest

from thelca.errors import ConfigurationError
from thelca.stores import open_store


@pytest.mark.parametrize(
    "url", ["mysql://user:pw@host/db", "thelca.db", "sqlite://relative.db", "", "file:///x.db"]
)
def test_open_store_refuses_an_unknown_scheme(url: str) -> None:
    with pytest.raises(ConfigurationError, match="sqlite:///PATH, memory:"):
        open_store(url)
