"""Reports and run records never carry a secret: the run store masks every text file it writes."""

from __future__ import annotations

import pytest

from quantmill.record import RunRecord
from quantmill.report.render import write_report
from quantmill.runstore import Run
from tests.report.test_report import run_json

SENTINEL = "hf_SECURITYsentinelDoNotLeak0123456789"


@pytest.fixture
def record(monkeypatch) -> RunRecord:
    """A run whose failed variant's error quotes the sentinel ``HF_TOKEN``."""
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    data = run_json(**{"gptq-w4": ("passed", 0.89, 1.2, 50.0), "rtn-w2": ("failed", 0.5, 0.7, 90.0)})
    data["variants"]["rtn-w2"]["error"] = f"OSError: 401 for https://hub/api?token={SENTINEL}"
    return RunRecord.model_validate(data)


@pytest.mark.fast
def test_report_is_masked_before_it_is_written(tmp_path, record):
    write_report(tmp_path, record)
    for name in ("report.md", "report.html"):
        text = (tmp_path / name).read_text()
        assert SENTINEL not in text and "token=***" in text, name


@pytest.mark.fast
def test_results_are_masked_before_they_are_written(tmp_path, record):
    run = Run(tmp_path)
    run.write_record(record)
    assert SENTINEL not in run.results_path.read_text()
    assert run.read_record().variants["rtn-w2"].error == "OSError: 401 for https://hub/api?token=***"
