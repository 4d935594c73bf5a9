"""The demo recipe end to end through Prefect: verdicts, the local zoo, cards, reports, artifacts."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from quantmill.publish.targets import front_matter
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def test_demo_recipe_end_to_end(tmp_path):
    from prefect import get_client

    from quantmill.flows.recipe import run_recipe

    text = (REPO / "recipes" / "demo.yaml").read_text().replace("../", f"{REPO}/")
    text = text.replace(f"path: {REPO}/zoo", f"path: {tmp_path / 'zoo'}")
    recipe = tmp_path / "demo.yaml"
    recipe.write_text(text)
    results = run_recipe(str(recipe), runs_dir=str(tmp_path / "runs"))

    statuses = {v: e["status"] for v, e in results["variants"].items()}
    assert statuses.pop("rtn-w2-g64") == "failed"  # 2-bit round-to-nearest loses the accuracy gate
    assert set(statuses.values()) == {"passed"}, statuses
    zoo = tmp_path / "zoo" / "quantmill-demo"
    published = sorted(p.name for p in zoo.iterdir() if p.is_dir() and p.name != "collections")
    assert published == sorted(f"tiny-llama-{v}" for v in statuses)  # the failing variant is absent
    run = tmp_path / "runs" / "demo" / results["run_id"]
    saved = json.loads((run / "results.json").read_text())["variants"]  # what the run measured, from disk
    for repo in published:
        card = (zoo / repo / "README.md").read_text()
        meta = front_matter(card)
        assert "base_model" not in meta and meta["license"] == "apache-2.0"  # a local model has no Hub id
        assert "## Evaluation" in card and "## Gates" in card
        # The card's model-index, read as the Hub reads it, carries this variant's own measurements.
        variant = saved[repo.removeprefix("tiny-llama-")]
        shown = {(r.dataset_name, r.metric_type): r.metric_value for r in ModelCard(card).data.eval_results}
        measured = variant["evaluation"]["metrics"]
        assert shown[("tiny_world_mc", "acc")] == measured["tiny_world_mc/acc"]["value"], repo
        assert shown[("tiny_world_ppl", "perplexity")] == measured["ppl"]["value"], repo
        assert meta["quantmill"]["verdict"] == variant["status"] == "passed"
    gguf_card = (zoo / "tiny-llama-gguf-q4_k_m" / "README.md").read_text()
    assert "tiny-llama-Q4_K_M.gguf" in gguf_card and "llama-cli" in gguf_card
    collection = json.loads((zoo / "collections" / "quantmill-demo-zoo.json").read_text())
    assert len(collection["items"]) == len(statuses)

    for name in ("results.json", "report.md", "report.html", "quality_vs_size.png", "quality_vs_speed.png"):
        assert (run / name).is_file(), name
    report = (run / "report.md").read_text()
    assert "memory-bound hosts" in report and "rtn-w2-g64" in report
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {"quantmill-demo-table", "quantmill-demo-report"} <= keys


def test_variant_logs_hold_the_libraries_output(demo_run):
    """What the libraries printed during the steps is in the run's per-variant logs, warnings counted."""
    logs = demo_run["run"] / "logs"
    gptq = (logs / "gptq-w4-g128.log").read_text()
    assert "INFO - Compression lifecycle initialized" in gptq  # llm-compressor's loguru lines
    gguf = (logs / "gguf-q4_k_m.log").read_text()
    assert "--- llama-quantize (exit 0) ---" in gguf and "llama_model_quantize_impl" in gguf  # llama.cpp's tool
    evaluating = gguf[gguf.index("=== evaluating gguf-q4_k_m") :]
    assert "llama_model_loader: loaded meta data" in evaluating  # llama.cpp's in-process log while evaluating
    bnb = (logs / "bnb-int8.log").read_text()
    warned = [line for line in bnb.splitlines() if "MatMul8bitLt: inputs will be cast" in line]
    assert len(warned) == 2 and warned[1].startswith("[repeated "), warned  # written once, then counted
    assert (logs / "baseline.log").read_text().startswith("=== evaluating baseline · ")
