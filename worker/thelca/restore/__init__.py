"""Rebuild an item store from the event log, to its end or to a moment in time; verify one.

The modules: `fold` (the log's events applied in order: restore's hot loop),
`items` and `links` (the item and link events' rules), `writers` (folded items
and links into a store), `rebuild` (`restore`), `chainwatch` (the hash chain,
followed while restore reads), `compare` (`verify`), `report` (what either found).
"""

from thelca.restore.compare import Difference, VerifyReport, verify
from thelca.restore.fold import AFTER_UNTIL, FLUSH_ITEMS, Fold, without_cyclic_gc
from thelca.restore.rebuild import restore
from thelca.restore.report import Problem, RestoreReport

__all__ = [
    "AFTER_UNTIL",
    "FLUSH_ITEMS",
    "Difference",
    "Fold",
    "Problem",
    "RestoreReport",
    "VerifyReport",
    "restore",
    "verify",
    "without_cyclic_gc",
]
