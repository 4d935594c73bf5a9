"""Read texts from a :class:`~quantmill.dataref.DatasetRef`: local files or hub data sets."""

from __future__ import annotations

import json
from pathlib import Path

from quantmill.dataref import DatasetRef
from quantmill.errors import QuantmillError


def load_texts(ref: DatasetRef, base_dir: Path) -> list[str]:
    """All non-empty texts of ``ref``, in file or data set order.

    Local ``.txt`` files give one text per line; ``.jsonl`` files one per line,
    read from ``ref.column``. Hub data sets are read with ``datasets``.

    Raises:
        QuantmillError: when the file or column is missing or unreadable.
    """
    if ref.path is not None:
        path = Path(ref.path).expanduser()
        path = path if path.is_absolute() else base_dir / path
        return _local_texts(path, ref.column)
    from datasets import load_dataset

    try:
        dataset = load_dataset(ref.hub, ref.subset, split=ref.split, revision=ref.revision)
    except Exception as exc:  # datasets raises many types for offline/missing data sets
        raise QuantmillError(f"cannot load data set '{ref.hub}' ({ref.split}): {exc}") from exc
    if ref.column not in dataset.column_names:
        raise QuantmillError(f"data set '{ref.hub}' has no column '{ref.column}' (columns: {dataset.column_names})")
    return [t for t in dataset[ref.column] if isinstance(t, str) and t.strip()]


def _local_texts(path: Path, column: str) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise QuantmillError(f"cannot read {path}: {exc.strerror}") from exc
    if path.suffix == ".txt":
        return [line for line in lines if line.strip()]
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise QuantmillError(f"{path}:{number}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict) or not isinstance(record.get(column), str):
            raise QuantmillError(f"{path}:{number}: no text field '{column}'")
        texts.append(record[column])
    return texts
