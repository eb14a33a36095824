"""docs/parity-sglang.md is generated from the committed record of executed SGLang 0.5.23 and our
current choice; every differing row has a reason from the tables (engines/parity_sglang.py)."""

from __future__ import annotations

from pathlib import Path

from moe_registry.engines.parity_sglang import DEVICES, case_key, layouts, load_record, parity_rows, render_markdown

ROOT = Path(__file__).resolve().parents[1]
RECORD = load_record()
ROWS = parity_rows(RECORD)


def test_the_document_is_current():
    committed = (ROOT / "docs" / "parity-sglang.md").read_text(encoding="utf-8")
    assert render_markdown(ROWS, RECORD) == committed, "stale: run python3 scripts/parity_sglang.py"


def test_every_row_is_explained():
    assert [f"{r.model} {r.device} {r.parallel} {r.layers}: {r.via}" for r in ROWS if not r.explained] == []


def test_the_record_covers_every_row_and_was_executed():
    assert RECORD["engine"] == "sglang" and RECORD["version"] == "0.5.23"
    for name, parallel in layouts():
        for dev in DEVICES:
            assert case_key("model", dev, name, parallel) in RECORD["cases"]
    assert any(f.startswith("F1 torch.cuda") for f in RECORD["fakes"])


def test_rows_agree_only_on_the_same_family():
    for r in ROWS:
        if r.agree and r.ours is not None:
            assert r.ours_family == r.sglang_family is not None
        if r.sglang is None:
            assert not r.agree or r.ours is None
