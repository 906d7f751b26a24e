"""The fault suite's results table: merged in fault order whatever the worker order, never written half,
and the committed docs/fault-suite.md is exactly what the renderer makes of its own rows."""

from __future__ import annotations

import re

from tests.e2e.faultlog import HEADER, FaultRecord, FaultSuite, render
from tests.e2e.test_faults import DOC, FAULTS


def test_rows_merge_in_fault_order_and_only_a_complete_suite_is_written(tmp_path):
    doc = tmp_path / "docs" / "fault-suite.md"
    gw1 = FaultSuite(tmp_path / "frags", doc, {1, 2, 3})
    gw0 = FaultSuite(tmp_path / "frags", doc, {1, 2, 3})
    gw1.record(3, "third", ["did | piped"], ["saw\nthis"])
    gw0.record(1, "first", ["a", "b"], ["c"])
    assert gw1.finish() is False and not doc.exists()  # fault 2 has not reported: keep the old table
    gw1.record(2, "second", ["x"], ["y"])
    assert gw0.finish() is True
    rows = [ln for ln in doc.read_text().splitlines() if re.match(r"^\| \d", ln)]
    assert [r.split(" | ")[1] for r in rows] == ["first", "second", "third"]
    assert "did \\| piped" in rows[2] and "saw this" in rows[2] and "a<br>b" in rows[0]
    first = doc.read_text()
    assert gw1.finish() and doc.read_text() == first  # deterministic: the same fragments, the same bytes


def _parse(text: str) -> list[FaultRecord]:
    out = []
    for line in text.splitlines():
        m = re.match(r"^\| (\d+) \| (.*) \| (.*) \| (.*) \| (\w+) \|$", line)
        if m:
            split = lambda cell: [c.replace("\\|", "|") for c in cell.split("<br>")]  # noqa: E731
            out.append(FaultRecord(int(m[1]), m[2], split(m[3]), split(m[4]), m[5]))
    return out


def test_committed_table_is_generated_and_covers_every_fault():
    text = DOC.read_text()
    assert text.startswith(HEADER)
    records = _parse(text)
    assert {r.no for r in records} == FAULTS and all(r.result == "passed" for r in records)
    assert render(records) == text  # not typed by hand: the renderer reproduces it byte for byte
