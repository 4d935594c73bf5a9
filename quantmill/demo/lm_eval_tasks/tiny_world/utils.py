"""Loaders for the tiny-world lm-eval tasks: read the JSON lines beside this file.

``custom_dataset`` keeps the tasks offline and independent of the working
directory (``dataset_path: json`` would resolve data files against the CWD).
"""

import json
from pathlib import Path

DATA = Path(__file__).parent / "data"


def _rows(name: str) -> list[dict]:
    with (DATA / name).open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_multiple_choice(**_metadata):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_rows("tiny_world_mc.jsonl"))})


def load_perplexity(**_metadata):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_rows("tiny_world_ppl.jsonl"))})
