"""The link events' rules for the fold: `Link created`, `Link updated`, `Link deleted`.

Links are fewer than items and take the fold's slow path: every live link's
latest line and version is kept until the end, and a deleted link is dropped,
so a `Link created` and then a `Link deleted` leave no link. Logs of the
original server are read as it wrote them: its first links kept `source` and
`target` inside `properties`, and its `Link deleted` carried the whole link
where later ones carry only its id.

With several workers the log is not in version order (each publishes after its
own commit), so an update or delete logged ahead of its link's version waits
until the versions before it have come, as item updates do.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson

from thelca.domain.model import Link, StoredLink
from thelca.restore.report import AFTER_UNTIL, Problem, RestoreReport
from thelca_client.contract import LINK_CREATED, LINK_DELETED, LINK_UPDATED, parse_time

LINK_CHANGES = frozenset((LINK_CREATED, LINK_UPDATED, LINK_DELETED))

# A held event: its type, where it stands in the log, and its line.
Held = tuple[str, str, int, bytes]


def well_formed(value: dict[str, Any]) -> bool:
    """True when a link event's value can be a link: the item fields, and source and target
    at the top or (the original server's first links) inside properties."""
    properties = value.get("properties")
    if not (type(value.get("id")) is str and type(value.get("created_at")) is str
            and type(value.get("created_by")) is str
            and (properties is None or type(properties) is dict)):
        return False
    ends = properties or {}
    return all(type(value.get(end, ends.get(end))) is str for end in ("source", "target"))


def link_of(raw: bytes) -> Link:
    """The Link of a log line the fold has checked."""
    return Link.from_json(orjson.loads(raw)["value"])


class LinkFold:
    """The links a log describes: each live link's latest line and version."""

    def __init__(self, report: RestoreReport, until: datetime | None) -> None:
        self.report = report
        self.until = until
        self.versions: dict[str, int] = {}  # live links only
        self.lines: dict[str, bytes] = {}  # a live link's latest created or updated line
        self.seen: set[str] = set()  # every link ever created, deleted ones too
        self.held: dict[str, dict[int, Held]] = {}  # by link, by the version it follows

    def apply(self, kind: str, event: dict[str, Any], raw: bytes, name: str,
              number: int) -> str | None:
        """Apply one link event; why it cannot be applied, or None."""
        if self.until is not None:
            try:
                if parse_time(event["time"]) > self.until:
                    self.report.skipped[AFTER_UNTIL] += 1
                    return None
            except (KeyError, TypeError, ValueError) as error:
                return f"{kind} event is malformed: its time cannot be read: {error}"
        link_id = _link_id(kind, event.get("value"))
        if link_id is None:
            return (f"{kind} event is malformed: " + (
                "value is not a link id" if kind == LINK_DELETED else
                "id, created_at and created_by must be strings, source and target too, "
                "and properties an object or null"))
        logged = event.get("version")
        if type(logged) is int and self._ahead(kind, link_id, logged):
            self.held.setdefault(link_id, {})[_slot(kind, logged)] = (kind, name, number, raw)
            return None
        why = self._change(kind, link_id, logged, raw)
        if why is None and link_id in self.held:
            self._release(link_id)
        return why

    def _ahead(self, kind: str, link_id: str, logged: int) -> bool:
        """Whether an update or delete comes before the versions it follows."""
        if kind == LINK_CREATED:
            return False
        return _slot(kind, logged) > self.versions.get(link_id, 0) + 1

    def _change(self, kind: str, link_id: str, logged: Any, raw: bytes) -> str | None:
        current = self.versions.get(link_id)
        if kind == LINK_CREATED:
            if link_id in self.seen:
                return f"link {link_id} is created twice"
            version = 1
        elif current is None:
            verb = "updated" if kind == LINK_UPDATED else "deleted"
            when = "after it is deleted" if link_id in self.seen else "before it is created"
            return f"link {link_id} is {verb} {when}"
        else:
            version = current + 1 if kind == LINK_UPDATED else current
        if logged is not None and logged != version:
            return (f"link {link_id} is logged at version {logged} "
                    f"but the log so far makes it version {version}")
        self.seen.add(link_id)
        self.report.applied += 1
        if kind == LINK_DELETED:
            del self.versions[link_id], self.lines[link_id]
        else:
            self.versions[link_id] = version
            self.lines[link_id] = raw
        return None

    def _release(self, link_id: str) -> None:
        """Apply the held events of a link that now follow its version."""
        waiting = self.held[link_id]
        while link_id in self.versions and (slot := self.versions[link_id] + 1) in waiting:
            kind, name, number, raw = waiting.pop(slot)
            event = orjson.loads(raw)
            why = self._change(kind, link_id, event.get("version"), raw)
            if why is not None:
                self.report.problems.append(Problem(name, number, why))
        if not waiting:
            del self.held[link_id]

    def settle_held(self) -> list[Problem]:
        """The held events whose earlier versions never came."""
        problems = []
        for link_id, waiting in self.held.items():
            for slot, (kind, name, number, _) in waiting.items():
                verb = "updated" if kind == LINK_UPDATED else "deleted"
                why = (f"link {link_id} is {verb} before it is created"
                       if link_id not in self.seen else
                       f"link {link_id} is {verb} after version {slot - 1} but the log never "
                       f"reached version {slot - 1}")
                problems.append(Problem(name, number, why))
        self.held.clear()
        return problems

    def links(self) -> Iterator[StoredLink]:
        """Every live link at its latest version, ordered by id."""
        for link_id in sorted(self.lines):
            yield StoredLink(link_of(self.lines[link_id]), self.versions[link_id])


def _link_id(kind: str, value: Any) -> str | None:
    """The id a link event is about, or None when its value is not what that type holds."""
    if kind == LINK_DELETED:
        if type(value) is str:
            return value
        value = value.get("id") if type(value) is dict else None
        return value if type(value) is str else None
    if type(value) is not dict or not well_formed(value):
        return None
    link_id: str = value["id"]
    return link_id


def _slot(kind: str, logged: int) -> int:
    """The version a held event waits for its link to reach, plus one: an update to N follows
    N - 1, and a delete logs the version the link had, N, so it follows N itself."""
    return logged if kind == LINK_UPDATED else logged + 1
