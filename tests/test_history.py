"""``quantmill runs`` and ``quantmill show``: past runs read back from a run store built in tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from quantmill import cli
from quantmill.record import RunStatus
from quantmill.runstore import Run
from quantmill.settings import get_settings

pytestmark = pytest.mark.fast

V1_FIXTURE = Path(__file__).parent / "data" / "results-v1.json"
FIRST, SECOND, BROKEN, RUNNING = (
    "20261127T083000Z-1a2b3c",
    "20261128T083000.000001Z-4d5e6f",
    "20261129T083000.000001Z-777777",
    "20261130T083000.000001Z-888888",
)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """demo: the fixture's troubled run, then a clean one, an unreadable one and one still running."""
    root = tmp_path / "runs"
    first = Run(root / "demo" / FIRST)
    first.path.mkdir(parents=True)
    shutil.copy(V1_FIXTURE, first.results_path)
    record = first.read_record()
    zoo = tmp_path / "zoo" / "org" / "tiny-llama-rtn-w4-g128"
    zoo.mkdir(parents=True)
    (zoo / "README.md").write_text("# card\n")
    record.variants["rtn-w4-g128"].publish.url = zoo.as_uri()  # type: ignore[union-attr]
    artifact = tmp_path / "artifacts" / "rtn-w8-g128"
    artifact.mkdir(parents=True)
    (artifact / "README.md").write_text("# card\n")
    record.variants["rtn-w8-g128"].artifact = artifact
    first.write_record(record)
    (first.path / "logs").mkdir()
    (first.path / "logs" / "rtn-w4-g128.log").write_text("quantizing\n")

    clean = record.model_copy(deep=True)
    clean.run_id, clean.regressions = SECOND, []
    clean.variants = {"rtn-w4-g128": clean.variants["rtn-w4-g128"]}
    Run(root / "demo" / SECOND).write_record(clean)
    (root / "demo" / BROKEN).mkdir()
    (root / "demo" / BROKEN / "results.json").write_text("{not json")
    running = clean.model_copy(update={"run_id": RUNNING, "status": RunStatus.RUNNING})
    Run(root / "demo" / RUNNING).write_record(running)
    (root / "demo" / "artifacts").mkdir()  # not a run

    monkeypatch.setenv("QUANTMILL_RUNS_DIR", str(root))
    get_settings.cache_clear()
    yield root
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def quantmill(monkeypatch):
    """Run the CLI in this process; returns (exit code, stdout text, stderr text), rendered 250 (errors 1000) columns wide."""

    monkeypatch.setenv("COLUMNS", "250")  # without it, output that is not a terminal is drawn 160 wide

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = Console(width=250, record=True), Console(width=1000, record=True, stderr=True)
        monkeypatch.setattr(cli, "console", out)
        monkeypatch.setattr(cli, "err_console", err)
        code = cli.main(list(argv))
        return code, out.export_text(), err.export_text()

    return run


def test_runs_lists_runs_newest_first_with_outcome_counts_and_numbers(store, quantmill):
    code, out, _ = quantmill("runs")
    assert code == 0
    lines = [line for line in out.splitlines() if "demo" in line]
    assert [next(i for i in (FIRST, SECOND, BROKEN, RUNNING) if i in line) for line in lines] == [
        RUNNING,
        BROKEN,
        SECOND,
        FIRST,
    ]
    running, broken, clean, troubled = lines
    assert "running" in running
    assert "unreadable" in broken and "results.json is not valid JSON" in broken
    assert "passed" in clean and "1 passed" in clean and "rtn-w4-g128 (0.973, 1.2 MB)" in clean
    assert "publish failed" in troubled and "1 pending, 2 passed, 1 failed" in troubled
    assert "rtn-w8-g128 (0.995)" in troubled and "tiny_world_mc/acc 0.925" in troubled
    assert troubled.rstrip(" │").endswith("1")  # one regression


def test_runs_of_one_recipe_and_the_last_n(store, quantmill, write_recipe):
    code, out, _ = quantmill("runs", "demo", "--last", "1")
    assert code == 0 and RUNNING in out and FIRST not in out and "3 older run(s) not shown" in out
    from quantmill.testing.recipes import fast_recipe

    recipe = write_recipe(fast_recipe("    - {method: rtn, bits: 4}\n").replace("name: flowtest", "name: demo"))
    assert quantmill("runs", str(recipe), "--last", "1")[1] == out  # a recipe file names its recipe


def test_show_a_run_by_id_prefix_or_folder(store, quantmill):
    code, out, _ = quantmill("show", "20261127")
    assert code == 0
    assert "publish failed (exit 4): 1 passing variant(s) failed to publish: rtn-w8-g128" in out
    assert "model     /repo/quantmill/demo/tiny-llama@sha256:0123abcd" in out
    row = next(line for line in out.splitlines() if "rtn-w4-g128" in line and "0.973" in line)
    assert "0.9 (0.973)" in row and row.rstrip(" │").endswith("yes")  # its log exists
    assert "QuantizationError: bnb-int8: worker killed by signal 9" in out
    assert "rtn-w4-g128 tiny_world_mc/acc 0.95 → 0.9 (changed by -0.05, beyond its stderr 0.028)" in out
    assert quantmill("show", str(store / "demo" / FIRST)) == (code, out, "")


def test_show_a_variant_gives_its_whole_record(store, quantmill, tmp_path, capsys):
    code, out, _ = quantmill("show", FIRST, "rtn-w4-g128")
    assert code == 0
    fields = {line.split(None, 1)[0]: line.split(None, 1)[1].strip() for line in out.splitlines()[:13]}
    assert fields["variant"] == "rtn-w4-g128: rtn w4 g128" and fields["status"] == "passed"
    assert fields["recipe"] == "demo (/repo/recipes/demo.yaml, sha256 5e1f)"
    assert fields["model"] == "/repo/quantmill/demo/tiny-llama@sha256:0123abcd" and fields["quantmill"] == "0.9.0"
    assert fields["cached"] == "quantize, evaluate"
    assert fields["artifact"] == "/repo/runs/demo/artifacts/rtn-w4-g128-0a1b2c3d4e5f (missing)"
    assert fields["card"] == str(tmp_path / "zoo" / "org" / "tiny-llama-rtn-w4-g128" / "README.md")  # as published
    assert fields["log"] == str(store / "demo" / FIRST / "logs" / "rtn-w4-g128.log")
    gate = next(line for line in out.splitlines() if "min_recovery" in line)
    assert gate.split()[1:] == ["tiny_world_mc/acc", "│", "min_recovery", "│", "0.9", "│", "required", "│", "0.9",
                                "│", "0.925", "│", "0.973", "│", "passed", "│", "│"]  # fmt: skip
    assert "│ max_increase_pct │ 10        │ warn     │ 2.4      │ 0        │ inf      │ warning │" in out
    unpublished = quantmill("show", FIRST, "rtn-w8-g128")[1]
    assert f"card       {tmp_path / 'artifacts' / 'rtn-w8-g128' / 'README.md'}" in unpublished  # the artifact's
    assert "published  failed: PublishError: the license of m is unknown" in unpublished
    assert f"log        {store / 'demo' / FIRST / 'logs' / 'rtn-w8-g128.log'} (missing)" in unpublished
    capsys.readouterr()
    assert quantmill("show", FIRST, "rtn-w4-g128", "--json")[0] == 0
    assert json.loads(capsys.readouterr().out)["verdict"]["outcomes"][0]["compared"] == pytest.approx(0.973, abs=1e-3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("show", "nope"), f"error: no run 'nope' (neither a run folder nor a run id in {{store}}); recent runs: "
                           f"demo/{FIRST}, demo/{SECOND}, demo/{BROKEN}, demo/{RUNNING}"),
        (("show", "2026"), f"error: '2026' names 4 runs in {{store}}: {FIRST}, {SECOND}, {BROKEN}, {RUNNING}; "
                           "give more of the id"),
        (("show", FIRST, "nope"), f"error: no variant 'nope' in run {FIRST}; its variants: "
                                  "bnb-int8, gguf-q8_0, rtn-w4-g128, rtn-w8-g128"),
        (("runs", "nope"), "error: no runs of recipe 'nope' in {store}; recipes with runs: demo"),
    ],
)  # fmt: skip
def test_unknown_runs_recipes_and_variants_are_one_line_errors_listing_the_choices(store, quantmill, argv, message):
    code, out, err = quantmill(*argv)
    assert code == 1 and out == ""
    assert err.splitlines()[0] == message.format(store=store)
    assert "Traceback" not in err


@pytest.mark.parametrize("last", ["0", "-3", "many"])
def test_runs_refuses_a_count_below_one(last, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["runs", "--last", last])
    assert exited.value.code == 2 and "at least 1" in capsys.readouterr().err
