"""The nightly zoo's own messages (its log lines and the outcomes it returns) never carry a secret."""

from __future__ import annotations

import logging

import pytest

from quantmill.errors import QuantmillError

pytestmark = pytest.mark.fast

SENTINEL = "hf_SECURITYsentinelDoNotLeak0123456789"


class Collect(logging.Handler):
    """Keeps the final text of every record (importing Prefect replaces the root's handlers, caplog's too)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_zoo_masks_a_recipe_error_that_quotes_the_token(tmp_path, monkeypatch):
    from quantmill.flows import zoo as zoo_module

    def refuse(path):
        raise QuantmillError(f"{path.name}: 401 Unauthorized for token {SENTINEL}")

    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setattr(zoo_module, "load_recipe", refuse)
    logger = logging.getLogger("zoo-test")
    collect = Collect()
    logger.addHandler(collect)
    monkeypatch.setattr(zoo_module, "get_run_logger", lambda: logger)
    (tmp_path / "bad.yaml").write_text("name: bad\n")

    try:
        outcomes = zoo_module.zoo.fn(str(tmp_path), runs_dir=str(tmp_path / "runs"))
    finally:
        logger.removeHandler(collect)

    assert outcomes == {"bad.yaml": {"status": "invalid", "error": "bad.yaml: 401 Unauthorized for token ***"}}
    assert collect.lines == ["bad.yaml: bad.yaml: 401 Unauthorized for token ***"]
