"""Read texts from a :class:`~quantmill.dataref.DatasetRef`: local files or hub data sets.

Local files are streamed line by line and read only as far as the caller takes texts,
so a recipe that needs 128 samples reads 128 lines, not the whole file; and no file
gives more than the operator's ``max_data_file_bytes`` (a longer read is refused).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import count, islice
from pathlib import Path

from quantmill.dataref import DatasetRef
from quantmill.errors import QuantmillError
from quantmill.trust.operator import get_operator


def load_texts(ref: DatasetRef, base_dir: Path, limit: int | None = None) -> list[str]:
    """The first ``limit`` (None: all) non-empty texts of ``ref``, in file or data set order.

    Local ``.txt`` files give one text per line; ``.jsonl`` files one per line,
    read from ``ref.column``. Hub data sets are read with ``datasets``.

    Raises:
        QuantmillError: when the file or column is missing or unreadable, or reading the
            texts asked for would pass the operator's byte limit for a data file.
    """
    return list(islice(iter_texts(ref, base_dir), limit))


def iter_texts(ref: DatasetRef, base_dir: Path) -> Iterator[str]:
    """The texts of ``ref`` (see :func:`load_texts`), a local file read only as far as they are taken."""
    if ref.path is not None:
        path = Path(ref.path).expanduser()
        yield from _local_texts(path if path.is_absolute() else base_dir / path, ref.column)
        return
    from datasets import load_dataset

    if Path(str(ref.hub)).exists():  # datasets would read the folder of that name here, not the Hub's
        raise QuantmillError(
            f"data set '{ref.hub}' is also a local file or folder here ({Path.cwd()}); "
            "name local data with 'path:', or run from another folder"
        )
    try:
        dataset = load_dataset(ref.hub, ref.subset, split=ref.split, revision=ref.revision)
    except Exception as exc:  # datasets raises many types for offline/missing data sets
        raise QuantmillError(f"cannot load data set '{ref.hub}' ({ref.split}): {exc}") from exc
    if ref.column not in dataset.column_names:
        raise QuantmillError(f"data set '{ref.hub}' has no column '{ref.column}' (columns: {dataset.column_names})")
    yield from (t for t in dataset[ref.column] if isinstance(t, str) and t.strip())


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline), refusing to read more than the operator's byte limit."""
    limit = get_operator().max_data_file_bytes
    try:
        with open(path, "rb") as handle:
            read = 0
            for number in count(1):
                raw = handle.readline(limit - read + 1)  # a line without newlines cannot outgrow the limit either
                if not raw:
                    return
                read += len(raw)
                if read > limit:
                    raise QuantmillError(
                        f"{path}: reading it needs more than {limit} bytes, the operator's limit for a data file "
                        f"(QUANTMILL_MAX_DATA_FILE_BYTES); use a smaller file or ask for fewer samples or documents"
                    )
                try:
                    yield number, raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    raise QuantmillError(f"{path}:{number}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise QuantmillError(f"cannot read {path}: {exc.strerror}") from exc


def _local_texts(path: Path, column: str) -> Iterator[str]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        if path.suffix == ".txt":
            yield line
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise QuantmillError(f"{path}:{number}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict) or not isinstance(record.get(column), str):
            raise QuantmillError(f"{path}:{number}: no text field '{column}'")
        yield record[column]
