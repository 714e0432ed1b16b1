"""Authorities: who a token belongs to, and what that user may do."""

from thelca.authority.base import Authority, Principal
from thelca.authority.test_only import TestOnlyAuthority

__all__ = ["Authority", "Principal", "TestOnlyAuthority"]
