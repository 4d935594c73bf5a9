"""The grouped GGUF repo: one repo for every accepted type, one commit per run, a files table from results.json."""

from __future__ import annotations

import json

import pytest

from quantmill.publish.gguf_repo import TABLE_HEADER, tag_file
from quantmill.publish.publish_run import publish_recorded
from quantmill.publish.publisher import publishable
from quantmill.publish.targets import HubTarget, LocalZoo, front_matter
from quantmill.record import VariantStatus
from tests.conftest import DEMO_DATA, DEMO_MODEL, DEMO_TASKS
from tests.support.hubserver import HubServer

TYPES = ["q8_0", "q4_k_m", "iq4_xs"]
RECIPE = f"""\
name: gguf-zoo
model: {{id: {DEMO_MODEL}, dtype: float32}}
device: cpu
calibration: {{dataset: {{path: {DEMO_DATA / "calibration.jsonl"}}}, num_samples: 32, seq_len: 64}}
evaluation:
  tasks: [tiny_world_mc]
  include_paths: [{DEMO_TASKS}]
  limit: 40
  perplexity: {{dataset: {{path: {DEMO_DATA / "tiny_world_ppl.jsonl"}}}, max_length: 64, stride: 32}}
  metrics: [size, speed]
variants:
  methods:
    - {{method: gguf, types: [{", ".join(TYPES)}]}}
  overrides:
    gguf-iq4_xs: {{imatrix: true}}
gates:
  - {{metric: tiny_world_mc/acc, min_recovery: 0.5}}
publish:
  namespace: zoo-org
  license: apache-2.0
"""
REPO = "zoo-org/tiny-llama-GGUF"


@pytest.mark.fast
def test_type_tags_resolve_as_llama_cpp_resolves_them():
    files = [
        "imatrix.gguf",
        "m-Q4_K_S.gguf",
        "m-Q4_K_M.gguf",
        "m-IQ4_XS.gguf",
        "m-Q8_0-00002-of-00002.gguf",
        "m-Q8_0-00001-of-00002.gguf",
        "README.md",
    ]
    assert tag_file(files, "Q4_K_M") == "m-Q4_K_M.gguf"
    assert tag_file(files, "q4_k_s") == "m-Q4_K_S.gguf"  # any case
    assert tag_file(files, "Q4_K") is None  # Q4_K_M does not answer Q4_K: the tag must end at "." or "-"
    assert tag_file(files, "Q8_0") == "m-Q8_0-00001-of-00002.gguf"  # a split file loads from its first shard
    assert tag_file(files, "iq4_xs") == "m-IQ4_XS.gguf"


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The recipe's GGUF variants made, measured and gated once (no publishing): its run and loaded recipe."""
    from quantmill.pipeline import run_sequential

    folder = tmp_path_factory.mktemp("gguf-zoo")
    (folder / "recipe.yaml").write_text(RECIPE)
    run = run_sequential(folder / "recipe.yaml", runs_dir=folder / "runs", publish=False, servable=False)
    assert all(e.status == VariantStatus.PASSED for e in run.record.variants.values()), run.record.variants
    return run


@pytest.fixture
def online(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def publish_all(run, record, target):
    """Publish as the pipeline does: variant after variant, every one that passed."""
    return [publish_recorded(run.loaded, record, v, target, []) for v in publishable(record.variants)]


def with_variants(record, **changes):
    """A copy of the record with some variants dropped (None) or changed (a dict of fields)."""
    variants = {}
    for v, entry in record.variants.items():
        change = changes.get(v.replace("-", "_"), {})
        if change is not None:
            variants[v] = entry.model_copy(update=change)
    return record.model_copy(update={"variants": variants})


def cell(metrics: dict, name: str) -> str:
    """A number of results.json as the card must show it: 4 significant digits, or n/a when not measured."""
    return f"{metrics[name]['value']:.4g}" if name in metrics else "n/a"


def table(card: str) -> dict[str, dict[str, str]]:
    """The card's files table: file → column → cell."""
    lines = card[card.index("| " + " | ".join(TABLE_HEADER)) :].splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:] if line.startswith("|")]
    return {row[0].strip("`"): dict(zip(TABLE_HEADER, row, strict=True)) for row in rows}


@pytest.mark.slow
@pytest.mark.gguf
@pytest.mark.hub
def test_every_type_in_one_repo_one_commit_a_table_from_results_json(ran, tmp_path, online):
    from huggingface_hub import HfApi, hf_hub_download

    with HubServer() as hub:
        outcomes = publish_all(ran, ran.record, HubTarget(endpoint=hub.endpoint))
        assert list(hub.state.repos) == [REPO]
        repo = hub.state.repos[REPO]
        assert len(repo.commits) == 1
        assert {o.repo_id for o in outcomes} == {REPO} and {o.commit for o in outcomes} == {repo.commits[0]["oid"]}
        assert [o.status for o in outcomes] == ["published"] * len(TYPES)
        assert set(repo.files) == {"README.md", "imatrix.gguf"} | {f"tiny-llama-{t.upper()}.gguf" for t in TYPES}
        card = repo.files["README.md"].decode()
        HfApi(endpoint=hub.endpoint, token=False)._validate_yaml(card)

        # every cell from the run's results.json, read from disk; rows smallest first
        saved = json.loads((ran.path / "results.json").read_text())
        baseline = saved["baseline"]["evaluation"]["metrics"]
        shown = table(card)
        assert list(shown) == sorted(shown, key=lambda f: float(shown[f]["size (MB)"]))
        for file, cells in shown.items():
            gguf_type = file.removeprefix("tiny-llama-").removesuffix(".gguf")
            variant = saved["variants"][f"gguf-{gguf_type.lower()}"]
            metrics = variant["evaluation"]["metrics"]
            acc = metrics["tiny_world_mc/acc"]["value"]
            expected = {
                "type": gguf_type,
                "size (MB)": cell(metrics, "size_mb"),
                "bits per weight": cell(metrics, "bits_per_weight"),
                "quality": f"{acc:.4g}",
                "recovery": f"{acc / baseline['tiny_world_mc/acc']['value']:.4g}",
                "perplexity": cell(metrics, "ppl"),
                "KLD": cell(metrics, "kld"),  # (llama-perplexity's KLD can be missing: then "n/a")
                "decode (tokens/s)": cell(metrics, "decode_tok_s"),
                "verdict": variant["status"],
            }
            assert {k: v for k, v in cells.items() if k != "file"} == expected, file
            # the tag a runtime is given resolves to this row's file, and the file downloads
            assert tag_file(repo.files, gguf_type) == file
            assert hf_hub_download(REPO, file, endpoint=hub.endpoint, cache_dir=tmp_path / "dl")
        assert "in `imatrix.gguf`, used by `tiny-llama-IQ4_XS.gguf`" in card
        assert "Smallest that keeps ≥ 50% of the baseline's tiny_world_mc/acc" in card

        # a rerun (another run id) with the same numbers: no commit
        rerun = ran.record.model_copy(update={"run_id": "rerun"})
        assert {o.status for o in publish_all(ran, rerun, HubTarget(endpoint=hub.endpoint))} == {"unchanged"}
        assert len(repo.commits) == 1


@pytest.mark.slow
@pytest.mark.gguf
def test_new_types_join_failed_ones_leave_unmeasured_ones_stay(ran, tmp_path):
    zoo = LocalZoo(tmp_path / "zoo")
    folder = tmp_path / "zoo" / REPO
    commits = folder / ".commits.jsonl"

    publish_all(ran, with_variants(ran.record, gguf_q4_k_m=None, gguf_iq4_xs=None), zoo)
    assert sorted(p.name for p in folder.glob("*.gguf")) == ["tiny-llama-Q8_0.gguf"]
    publish_all(ran, ran.record, zoo)  # two new accepted types: one commit adds both
    assert len(commits.read_text().splitlines()) == 2
    assert len(list(folder.glob("tiny-llama-*.gguf"))) == 3

    # a run of one type (--only) leaves the others as they were: same card, no commit
    publish_all(ran, with_variants(ran.record, gguf_q4_k_m=None, gguf_iq4_xs=None), zoo)
    assert len(commits.read_text().splitlines()) == 2

    # a type measured again that fails is removed, file and row, in one commit
    failed = with_variants(ran.record, gguf_q4_k_m={"status": VariantStatus.FAILED})
    publish_all(ran, failed, zoo)
    assert len(commits.read_text().splitlines()) == 3
    assert not (folder / "tiny-llama-Q4_K_M.gguf").exists()
    card = (folder / "README.md").read_text()
    assert "tiny-llama-Q4_K_M.gguf" not in table(card) and "Q4_K_M" not in front_matter(card)["tags"]
    assert set(table(card)) == {"tiny-llama-Q8_0.gguf", "tiny-llama-IQ4_XS.gguf"}
