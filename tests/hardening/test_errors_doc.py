"""docs/errors.md lists every case of the table, with the error type and message it gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hardening.cases import CASES, Case

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def _rows() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = line
    return rows


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_case_is_documented_with_its_type_and_message(case: Case) -> None:
    row = _rows().get(case.id)
    assert row is not None, f"docs/errors.md has no row for `{case.id}`"
    assert f"`{case.error_type}`" in row
    for fragment in case.expect:
        assert fragment.replace("|", "\\|") in row, f"{case.id}: {fragment!r} missing"


def test_the_doc_lists_no_case_the_tests_do_not_check() -> None:
    assert set(_rows()) == {case.id for case in CASES}
