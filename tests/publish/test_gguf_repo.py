"""The grouped GGUF repo: one repo for every accepted type, one commit per run, a files table from results.json."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from quantmill.errors import PublishError
from quantmill.evaluation.results import MetricValue
from quantmill.publish import gguf_split
from quantmill.publish.gguf_repo import TABLE_HEADER, recommendations, tag_file
from quantmill.publish.publish_run import publish_recorded, publish_run
from quantmill.publish.publisher import publishable
from quantmill.publish.targets import HubTarget, LocalZoo, front_matter
from quantmill.record import VariantStatus
from quantmill.report.quality import recovery
from quantmill.runstore import Run
from quantmill.trust.operator import get_operator
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


@pytest.mark.fast
def test_recommendations_read_a_perplexity_recovery_the_right_way_round():
    """Recovery is value / baseline: for perplexity, keeping 99 % of the baseline is a recovery of at most 1/0.99."""
    rows = {
        "m-Q2_K.gguf": {"recovery": 1.02, "size_mb": 1.0},
        "m-Q4_K_M.gguf": {"recovery": 1.005, "size_mb": 2.0},
        "m-Q8_0.gguf": {"recovery": 1.001, "size_mb": 3.0},
    }
    advice, pick = recommendations(rows, "ppl", 0.99)
    assert pick == "m-Q4_K_M.gguf" and "`m-Q4_K_M.gguf`" in advice[0]
    assert "**Closest to the baseline**: `m-Q8_0.gguf`" in advice[1]
    accuracy = {f: {**r, "recovery": 2 - r["recovery"]} for f, r in rows.items()}  # higher is better
    assert recommendations(accuracy, "t/acc", 0.99)[1] == "m-Q4_K_M.gguf"


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
                "recovery": f"{recovery(MetricValue(acc), MetricValue(baseline['tiny_world_mc/acc']['value'])):.4g}",
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


@pytest.mark.slow
@pytest.mark.gguf
def test_recovery_is_the_reports_for_a_perplexity_quality(ran, tmp_path):
    """A recipe whose quality metric is perplexity: the card's recovery is the report's (value / baseline)."""
    baseline = ran.record.baseline
    metrics = {k: v for k, v in baseline.evaluation.metrics.items() if "/" not in k}  # no task: ppl is the quality
    only_ppl = baseline.model_copy(update={"evaluation": dataclasses.replace(baseline.evaluation, metrics=metrics)})
    record = ran.record.model_copy(update={"baseline": only_ppl})
    zoo = LocalZoo(tmp_path / "zoo")
    publish_all(ran, record, zoo)
    card = (tmp_path / "zoo" / REPO / "README.md").read_text()
    assert front_matter(card)["quantmill"]["quality_metric"] == "ppl"

    def assert_reports_recovery(card: str) -> None:
        for file, cells in table(card).items():
            entry = next(e for e in record.variants.values() if e.artifact and (e.artifact / file).is_file())
            expected = recovery(entry.evaluation.metrics["ppl"], only_ppl.evaluation.metrics["ppl"])
            assert expected is not None and cells["recovery"] == f"{expected:.4g}", file

    assert_reports_recovery(card)
    # a card written before the definition was recorded held baseline / value: the rows a later run keeps
    # (types it did not measure) are read in today's definition
    path = tmp_path / "zoo" / REPO / "README.md"
    meta = front_matter(card)
    for row in meta["quantmill"]["files"].values():
        row["recovery"] = 1 / row["recovery"]
        del row["recovery_is"]
    body = card.split("---\n", 2)[2]
    path.write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + body)
    publish_all(ran, with_variants(record, gguf_q4_k_m=None, gguf_iq4_xs=None), zoo)
    assert len(table(path.read_text())) == len(TYPES)
    assert_reports_recovery(path.read_text())


@pytest.mark.slow
@pytest.mark.gguf
def test_forcing_several_failed_types_publishes_them_all(ran, tmp_path):
    """`quantmill publish RUN --force A --force B` of two failed types: both files and rows, none dropped."""
    copy = tmp_path / ran.path.name
    shutil.copytree(ran.path, copy)
    failed = with_variants(
        ran.record, gguf_q4_k_m={"status": VariantStatus.FAILED}, gguf_iq4_xs={"status": VariantStatus.FAILED}
    )
    Run(copy).write_record(failed)
    zoo = tmp_path / "forced-zoo"
    snapshot = copy / "recipe.yaml"
    snapshot.write_text(snapshot.read_text() + f"  path: {zoo}\n")  # (its publish: block is last)
    outcomes = publish_run(copy, force=["gguf-q4_k_m", "gguf-iq4_xs"])
    assert [o.status for o in outcomes] == ["published"] * 3 and len({o.commit for o in outcomes}) == 1
    folder = zoo / REPO
    assert sorted(p.name for p in folder.glob("*.gguf")) == sorted(
        ["imatrix.gguf", *(f"tiny-llama-{t.upper()}.gguf" for t in TYPES)]
    )
    assert len((folder / ".commits.jsonl").read_text().splitlines()) == 1
    assert "[forced]" in json.loads((folder / ".commits.jsonl").read_text())["message"]
    verdicts = {f: cells["verdict"] for f, cells in table((folder / "README.md").read_text()).items()}
    assert verdicts == {
        "tiny-llama-Q8_0.gguf": "passed",
        "tiny-llama-Q4_K_M.gguf": "failed",
        "tiny-llama-IQ4_XS.gguf": "failed",
    }


@pytest.mark.slow
@pytest.mark.gguf
def test_sibling_variants_report_the_commit_the_repo_says_their_run_made(ran, tmp_path):
    """Each GGUF variant's publish reads from the repo which commit put its run's content there, so a
    sibling published by another process (nothing shared in memory) reports that commit; a rerun under
    another run id reports unchanged."""
    zoo = LocalZoo(tmp_path / "zoo")
    first, *siblings = publishable(ran.record.variants)
    published = publish_recorded(ran.loaded, ran.record, first, zoo, [])
    assert published.status == "published" and published.commit
    for sibling in siblings:  # as if in a new process: a fresh target, nothing but the repo to go by
        outcome = publish_recorded(ran.loaded, ran.record, sibling, LocalZoo(tmp_path / "zoo"), [])
        assert (outcome.status, outcome.commit) == ("published", published.commit)
    rerun = ran.record.model_copy(update={"run_id": "rerun"})
    assert {o.status for o in publish_all(ran, rerun, zoo)} == {"unchanged"}


@pytest.fixture
def split_at_1_mb(monkeypatch):
    """The operator splits GGUF files above 1 MB: the demo's Q8_0 file (1.6 MB) becomes two shards."""
    monkeypatch.setenv("QUANTMILL_GGUF_SPLIT_MAX_MB", "1")
    get_operator.cache_clear()
    yield
    monkeypatch.undo()
    get_operator.cache_clear()


def _ppl(path):
    """The GGUF file's perplexity on the demo's perplexity texts, by quantmill's own GGUF evaluation."""
    from quantmill.evaluation.perplexity import perplexity
    from quantmill.methods._gguf_eval import gguf_eval_model

    texts = [json.loads(line)["text"] for line in (DEMO_DATA / "tiny_world_ppl.jsonl").read_text().splitlines()]
    model = gguf_eval_model(path, "cpu")
    try:
        return perplexity(texts, model.tokenize, model.prefix_token, model.scorer, 64, 32)
    finally:
        model.release()


@pytest.mark.slow
@pytest.mark.gguf
@pytest.mark.hub
def test_a_file_above_the_threshold_is_published_as_shards_that_load_and_evaluate_the_same(
    ran, tmp_path, online, split_at_1_mb
):
    from huggingface_hub import hf_hub_download

    shards = ["tiny-llama-Q8_0-00001-of-00002.gguf", "tiny-llama-Q8_0-00002-of-00002.gguf"]
    with HubServer() as hub:
        outcomes = publish_all(ran, ran.record, HubTarget(endpoint=hub.endpoint))
        repo = hub.state.repos[REPO]
        assert len(repo.commits) == 1 and [o.status for o in outcomes] == ["published"] * len(TYPES)
        assert set(repo.files) == {
            "README.md",
            "imatrix.gguf",
            "tiny-llama-Q4_K_M.gguf",
            "tiny-llama-IQ4_XS.gguf",
        } | set(shards)
        assert tag_file(repo.files, "Q8_0") == shards[0]  # `llama-cli -hf repo:Q8_0` takes the first shard
        card = repo.files["README.md"].decode()
        row = table(card)[shards[0]]  # the row is the first shard, with the evaluated file's size
        q8 = ran.record.variants["gguf-q8_0"]
        assert row["size (MB)"] == f"{q8.evaluation.value('size_mb'):.4g}"
        assert front_matter(card)["quantmill"]["files"][shards[0]]["files"] == shards
        assert f"Split files: `{shards[0]}` (2 shards) is published as shards" in " ".join(card.split())
        for file in table(card):  # every row's link downloads
            assert hf_hub_download(REPO, file, endpoint=hub.endpoint, cache_dir=tmp_path / "dl")
        first = hf_hub_download(REPO, shards[0], endpoint=hub.endpoint, cache_dir=tmp_path / "dl")
        hf_hub_download(REPO, shards[1], endpoint=hub.endpoint, cache_dir=tmp_path / "dl")  # beside the first

        # llama.cpp loads the split file from its first shard and scores every window as the single file does
        unsplit = q8.artifact / "tiny-llama-Q8_0.gguf"
        assert _ppl(first) == _ppl(unsplit)
        assert not list(unsplit.parent.parent.glob(".publish-split-*"))  # the staging folder is gone

        # the same content again: no split, no commit
        assert {
            o.status
            for o in publish_all(
                ran, ran.record.model_copy(update={"run_id": "rerun"}), HubTarget(endpoint=hub.endpoint)
            )
        } == {"unchanged"}
        assert len(repo.commits) == 1


@pytest.mark.slow
@pytest.mark.gguf
def test_shards_that_are_not_a_faithful_split_are_refused(ran, tmp_path, split_at_1_mb, monkeypatch):
    real = gguf_split.run_tool

    def corrupting(command, **kwargs):
        output = real(command, **kwargs)
        if "--dry-run" not in command:  # one bit of the last shard's last tensor flipped
            last = next(Path(command[-1]).parent.glob("*-00002-of-00002.gguf"))  # (the tool's last argument: prefix)
            data = bytearray(last.read_bytes())
            data[-10] ^= 1
            last.write_bytes(bytes(data))
        return output

    monkeypatch.setattr(gguf_split, "run_tool", corrupting)
    zoo = tmp_path / "zoo"
    with pytest.raises(PublishError, match="not a faithful split .*tensor .* data differs"):
        publish_all(ran, ran.record, LocalZoo(zoo))
    assert not (zoo / REPO).exists()  # nothing was published


SEARCH = """\
search:
  objective: {minimize: size_mb}
  constraints:
    - {metric: tiny_world_mc/acc, min_recovery: 0.5}
  space:
    - {method: gguf, types: [q8_0, q4_k_m]}
  budget: {full_evaluations: 2}
"""


@pytest.mark.slow
@pytest.mark.gguf
def test_a_search_winner_in_the_grouped_repo_is_named_found_by_search(ran, tmp_path):
    """A search publishes only its winner; in the grouped repo, the card says which file the search found, under
    which goal (the section a winner's own repo card has); a matrix run's grouped card has no such section."""
    from quantmill.recipe.load import load_recipe_text
    from quantmill.search.trace import SearchTrace

    matrix = RECIPE[RECIPE.index("variants:") : RECIPE.index("publish:")]
    searched = load_recipe_text(RECIPE.replace(matrix, SEARCH), tmp_path)
    trace = SearchTrace(
        objective="minimize size_mb", constraints=[], budget=2, full_evaluations=1, candidates=[], summary="-"
    )
    record = with_variants(ran.record, gguf_q8_0=None, gguf_iq4_xs=None)
    record = record.model_copy(update={"search": trace.model_copy(update={"winner": "gguf-q4_k_m"})})
    publish_recorded(searched, record, "gguf-q4_k_m", LocalZoo(tmp_path / "zoo"), [])
    card = (tmp_path / "zoo" / REPO / "README.md").read_text()
    section = card[card.index("## Found by search") :]
    assert section.startswith("## Found by search\n\n`tiny-llama-Q4_K_M.gguf` (variant `gguf-q4_k_m`, q4_k_m) was")
    assert "**minimize size_mb**" in section and "`tiny_world_mc/acc min_recovery 0.5`" in section

    publish_all(ran, ran.record, LocalZoo(tmp_path / "matrix-zoo"))
    assert "Found by search" not in (tmp_path / "matrix-zoo" / REPO / "README.md").read_text()
