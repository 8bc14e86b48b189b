"""The simulator's ledger against what a store holds, by identity and by value.

A ledger line (``edge.tools.simulate``) names a message the site broker accepted: its
device, its time (unique per message in a run), how many measurement rows it must become
and their values by label. ``compare`` takes those lines and the stored rows
``(device, time, label, value)`` and tells, per message, what is missing, what is stored
twice and what is stored with a value the ledger does not have (a reading collapsed into
another or altered on the way): a count alone would miss the last two.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]  # (device, time as ISO 8601)


@dataclass
class Balance:
    expected: int = 0  # measurement rows the ledger asks for
    stored: int = 0  # of those, stored (each counted once)
    missing: list[tuple[str, str, int, int]] = field(default_factory=list)  # (device, time, expected, found)
    doubled: list[tuple[str, str, int, int]] = field(default_factory=list)  # (device, time, expected, stored)
    wrong: list[tuple[str, str, Any, Any]] = field(default_factory=list)  # (device, time, ledger, store)

    @property
    def balanced(self) -> bool:
        return not self.missing and not self.doubled and not self.wrong and self.stored == self.expected


def _value(v: Any) -> float:
    return round(float(v), 9)


def compare(entries: Iterable[dict[str, Any]], rows: Iterable[tuple[str, str, str, Any]]) -> Balance:
    want: dict[Key, collections.Counter[tuple[str, float]]] = {}
    for e in entries:
        if e.get("records"):
            values = e.get("values", {})
            if len(values) != e["records"]:
                raise ValueError(f"ledger line without a value per record: {e}")
            want.setdefault((e["device_id"], e["time"]), collections.Counter()).update(
                (label, _value(v)) for label, v in values.items())
    got: dict[Key, collections.Counter[tuple[str, float]]] = {}
    for device, time, label, value in rows:
        key = (device, time)
        if key in want:
            got.setdefault(key, collections.Counter())[(label, _value(value))] += 1
    out = Balance()
    for (device, time), expected in want.items():
        stored = got.get((device, time), collections.Counter())
        n, found = sum(expected.values()), sum(stored.values())
        out.expected += n
        out.stored += sum((expected & stored).values())
        if expected - stored:
            out.missing.append((device, time, n, found))
        extra = stored - expected
        if any(k in expected for k in extra):
            out.doubled.append((device, time, n, found))
        if any(k not in expected for k in extra):
            out.wrong.append((device, time, sorted(expected), sorted(stored)))
    return out
