"""A run's progress as events: which step each variant is in, and its numbers as they land.

Steps append one JSON line per stage transition to ``<run>/logs/progress.jsonl``; a
file, not an in-process queue, so steps running in other processes (Dask workers,
Prefect workers on the same store) report the same way. The console view follows the
file from an offset.

A line: ``{"t": 1733000000.5, "variant": "gptq-w4-g128", "stage": "evaluating"}``, plus,
on ``done``, ``"status"`` (passed, failed, inconclusive) and ``"cached"``. A published
variant is ``done`` twice: when its verdict is recorded, and after ``publishing`` (then
with ``"publish"``: published, unchanged, failed). The baseline's events use the name
``baseline`` (no variant may have that id).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("queued", "quantizing", "evaluating", "checking", "publishing", "done")
BASELINE = "baseline"
PROGRESS_FILE = "progress.jsonl"


def logs_dir(run_path: Path) -> Path:
    """Where a run's per-step logs and progress events live."""
    return run_path / "logs"


@dataclass(frozen=True)
class StageEvent:
    variant: str
    stage: str
    t: float
    fields: dict[str, Any] = field(default_factory=dict)


def emit(run_path: Path, variant: str, stage: str, **fields: Any) -> None:
    """Append one event; a single ``write`` to a file opened for appending, so concurrent writers do not interleave."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    folder = logs_dir(run_path)
    folder.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"t": time.time(), "variant": variant, "stage": stage, **fields}, default=str) + "\n"
    fd = os.open(folder / PROGRESS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_events(run_path: Path, offset: int = 0) -> tuple[list[StageEvent], int]:
    """The complete events after byte ``offset``, and the offset to read from next time."""
    path = logs_dir(run_path) / PROGRESS_FILE
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next read
    events = []
    for raw in complete.splitlines():
        try:
            item = json.loads(raw)
            events.append(StageEvent(str(item.pop("variant")), str(item.pop("stage")), float(item.pop("t")), item))
        except (ValueError, KeyError, TypeError):
            continue  # a damaged line is skipped: progress is informative, the record is the truth
    return events, offset + len(complete)
