"""Data files are streamed: read only as far as the recipe needs, and never past the operator's byte limit."""

from __future__ import annotations

import builtins
import json
from types import SimpleNamespace

import pytest

from quantmill import textdata
from quantmill.calibration import MIN_POOL, build_calibration_set
from quantmill.dataref import DatasetRef
from quantmill.errors import QuantmillError
from quantmill.recipe.schema import Calibration
from quantmill.trust.operator import get_operator

pytestmark = pytest.mark.fast

HUGE = 64 << 30  # a 64 GiB sparse tail: reading into it would take minutes and hit the byte limit


@pytest.fixture(autouse=True)
def small_limit(monkeypatch):
    """A 16 MiB limit, so that a reader that wrongly goes on into the hole fails fast, not after 1 GiB."""
    monkeypatch.setenv("QUANTMILL_MAX_DATA_FILE_BYTES", str(16 << 20))
    get_operator.cache_clear()
    yield
    monkeypatch.undo()
    get_operator.cache_clear()


@pytest.fixture
def bytes_read(monkeypatch) -> list[int]:
    """Bytes each ``open`` in quantmill.textdata has handed out so far (one entry per file opened)."""
    counts: list[int] = []

    class Counting:
        def __init__(self, handle):
            self.handle, self.index = handle, len(counts)
            counts.append(0)

        def readline(self, size=-1):
            line = self.handle.readline(size)
            counts[self.index] += len(line)
            return line

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(textdata, "open", lambda *a, **k: Counting(builtins.open(*a, **k)), raising=False)  # noqa: SIM115
    return counts


@pytest.fixture
def huge_jsonl(tmp_path):
    """``MIN_POOL + 100`` short texts, then a sparse hole of 64 GiB without a newline."""
    path = tmp_path / "huge.jsonl"
    lines = "".join(json.dumps({"text": f"sample number {i}"}) + "\n" for i in range(MIN_POOL + 100))
    path.write_text(lines)
    with path.open("r+b") as handle:
        handle.truncate(HUGE)
    return path, len(lines.encode())


def test_calibration_reads_only_its_pool(huge_jsonl, bytes_read, tmp_path):
    path, text_bytes = huge_jsonl
    calibration = Calibration(dataset=DatasetRef(path=str(path)), num_samples=8, seq_len=16)
    tokenizer = lambda text, **_: {"input_ids": [len(word) for word in text.split()]}  # noqa: E731
    drawn = build_calibration_set(calibration, tokenizer, tmp_path)
    assert len(drawn.input_ids) == 8
    assert bytes_read and bytes_read[0] < text_bytes  # stopped inside the texts, long before the hole


def test_perplexity_reads_only_max_documents(huge_jsonl, bytes_read, tmp_path, monkeypatch):
    from quantmill.evaluation import evaluate
    from quantmill.evaluation.results import EvaluationResult
    from quantmill.recipe.schema import Evaluation

    path, _ = huge_jsonl
    scored: list[str] = []

    def fake_perplexity(texts, *args):
        scored.extend(texts)
        return SimpleNamespace(ppl=1.0, tokens=1, documents=len(texts), word_perplexity=1.0, byte_perplexity=1.0)

    monkeypatch.setattr(evaluate, "perplexity", fake_perplexity)
    section = Evaluation(perplexity={"dataset": {"path": str(path)}, "max_documents": 3})
    model = SimpleNamespace(tokenize=None, prefix_token=0, scorer=None)
    evaluate._add_perplexity(model, evaluate.EvaluationSetup(section, tmp_path, None, "cpu"), EvaluationResult())
    assert scored == ["sample number 0", "sample number 1", "sample number 2"]
    assert bytes_read == [sum(len(json.dumps({"text": t}).encode()) + 1 for t in scored)]


def test_a_file_past_the_operator_limit_is_refused_with_its_name(huge_jsonl, tmp_path, monkeypatch):
    path, text_bytes = huge_jsonl
    monkeypatch.setenv("QUANTMILL_MAX_DATA_FILE_BYTES", str(text_bytes + 1000))
    get_operator.cache_clear()
    with pytest.raises(QuantmillError) as refused:
        textdata.load_texts(DatasetRef(path=str(path)), tmp_path)  # all of it: reads into the hole
    message = str(refused.value)
    assert str(path) in message and str(text_bytes + 1000) in message and "QUANTMILL_MAX_DATA_FILE_BYTES" in message


def test_a_hub_data_set_named_like_a_local_folder_is_not_read_from_that_folder(tmp_path, monkeypatch):
    (tmp_path / "org" / "notes").mkdir(parents=True)  # datasets would load this folder's files as the data set
    (tmp_path / "org" / "notes" / "secret.txt").write_text("not for the model\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QuantmillError, match="data set 'org/notes' is also a local file or folder here"):
        textdata.load_texts(DatasetRef(hub="org/notes"), tmp_path, limit=1)
    with pytest.raises(ValueError, match="'../org' is not a Hub data set id"):
        DatasetRef(hub="../org")
