"""Golden cases: fixtures/codecs/<case>/ holds a message as it travels and what it decodes to.

Each case: ``topic``; ``payload`` (wire text) or ``payload.hex`` (binary written as hex);
``received_at`` (the receive time for messages without their own); ``expected.jsonl``
(one record per line, as `edge decode` prints them) and ``expected.errors`` (one JSON
object per error: reason, field, offset). Regenerate after a reviewed, intended change
with ``EDGE_GOLDEN_UPDATE=1 pytest tests/codecs/test_golden.py`` and read the diff.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from edge.codecs import registry
from edge.codecs.dispatch import Dispatcher
from edge.codecs.errors import CodecError

REPO = Path(__file__).resolve().parents[2]
CASES = sorted(p for p in (REPO / "fixtures" / "codecs").iterdir() if p.is_dir())
DISPATCHER = Dispatcher(registry.loads((REPO / "fixtures" / "registry.toml").read_text()))


def decode_case(case: Path) -> tuple[list[dict], list[dict]]:
    topic = (case / "topic").read_text().strip()
    if (case / "payload.hex").exists():
        payload = bytes.fromhex((case / "payload.hex").read_text())
    else:
        payload = (case / "payload").read_bytes()
    received_at = datetime.fromisoformat((case / "received_at").read_text().strip())
    try:
        result = DISPATCHER.decode(topic, payload, received_at)
    except CodecError as exc:
        return [], [{"reason": exc.reason, "field": exc.field, "offset": exc.offset}]
    records = [r.to_json() for r in result.records]
    errors = [{"reason": e.reason, "field": e.field, "offset": e.offset} for e in result.errors]
    return records, errors


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def write_lines(path: Path, docs: list[dict]) -> None:
    if docs:
        path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    elif path.exists():
        path.unlink()


def test_there_are_golden_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_case(case: Path):
    records, errors = decode_case(case)
    if os.environ.get("EDGE_GOLDEN_UPDATE"):
        write_lines(case / "expected.jsonl", records)
        write_lines(case / "expected.errors", errors)
        if not records and not errors:  # "decodes to nothing" is stated by an empty file
            (case / "expected.jsonl").write_text("")
    assert (case / "expected.jsonl").exists() or (case / "expected.errors").exists(), \
        "a golden case must state what it decodes to"
    assert records == read_lines(case / "expected.jsonl")
    assert errors == read_lines(case / "expected.errors")
