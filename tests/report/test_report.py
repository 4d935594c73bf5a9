"""Reports: Pareto frontier, recommendation, regressions, and a report that renders in a browser."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from quantmill.record import RunRecord
from quantmill.report.compare import find_regressions
from quantmill.report.pareto import Point, pareto_frontier
from quantmill.report.recommend import recommend
from quantmill.report.render import write_report


@pytest.mark.fast
def test_pareto_excludes_dominated_points_and_keeps_ties():
    points = [
        Point("a", 1.0, 0.5),
        Point("b", 2.0, 0.9),
        Point("c", 2.0, 0.8),
        Point("d", 3.0, 0.9),
        Point("e", 1.0, 0.5),
        Point("f", 0.5, 0.1),
        Point("g", 4.0, 0.95),
    ]
    names = [p.name for p in pareto_frontier(points)]
    assert names == ["f", "a", "e", "b", "g"]  # c: same cost as b, worse; d: costlier than b, no better


@pytest.mark.fast
def test_pareto_of_one_and_none():
    assert pareto_frontier([]) == []
    assert [p.name for p in pareto_frontier([Point("x", 1, 1)])] == ["x"]


def metric(value, stderr=None):
    return {"value": value, "stderr": stderr}


def run(**variants) -> RunRecord:
    return RunRecord.model_validate(run_json(**variants))


def run_json(**variants):
    return {
        "recipe": "r",
        "recipe_path": "/recipes/r.yaml",
        "recipe_sha256": "abc",
        "quantmill_version": "1.0",
        "run_id": "run",
        "device": "cpu",
        "model": {"id": "m", "revision": "sha"},
        "baseline": {
            "evaluation": {"metrics": {"t/acc": metric(0.9, 0.02), "ppl": metric(2.0), "size_mb": metric(4.0)}}
        },
        "variants": {
            name: {
                "method": name.split("-")[0],
                "setting": "-",
                "status": status,
                "evaluation": {
                    "metrics": {
                        "t/acc": metric(acc, 0.02),
                        "size_mb": metric(size),
                        "decode_tok_s": metric(speed),
                        "ppl": metric(2.1),
                    }
                },
                "verdict": {"variant": name, "status": status, "outcomes": []},
            }
            for name, (status, acc, size, speed) in variants.items()
        },
    }


@pytest.mark.fast
def test_recommendation_follows_the_measurements():
    results = run(
        **{
            "gptq-w4": ("passed", 0.89, 1.2, 50.0),
            "int8-w8": ("passed", 0.9, 2.1, 80.0),
            "rtn-w2": ("failed", 0.5, 0.7, 90.0),
        }
    )
    recs = {r.use_case: r for r in recommend(results)}
    assert recs["memory-bound hosts"].variant == "gptq-w4"
    assert recs["latency-bound serving"].variant == "int8-w8"
    assert "unquantized" in recs["accuracy-critical use"].reason


@pytest.mark.fast
def test_no_passing_variant_keeps_the_baseline():
    recs = recommend(run(**{"rtn-w2": ("failed", 0.5, 0.7, 90.0)}))
    assert [r.variant for r in recs] == [None] and "keep the unquantized" in recs[0].reason


@pytest.mark.fast
def test_regression_flagged_only_beyond_noise():
    before = run(**{"gptq-w4": ("passed", 0.89, 1.2, 50.0)})
    dropped = run(**{"gptq-w4": ("failed", 0.80, 1.2, 55.0)})
    found = find_regressions(before, dropped)
    assert {(r.variant, r.what) for r in found} == {("gptq-w4", "verdict"), ("gptq-w4", "t/acc")}
    noisy = run(**{"gptq-w4": ("passed", 0.88, 1.2, 10.0)})  # within stderr; speed is never flagged
    assert find_regressions(before, noisy) == []
    bigger = run_json(**{"gptq-w4": ("passed", 0.89, 1.2, 50.0)})
    bigger["variants"]["gptq-w4"]["evaluation"]["metrics"]["size_mb"] = metric(1.3)
    assert [(r.what) for r in find_regressions(before, RunRecord.model_validate(bigger))] == ["size_mb"]


@pytest.mark.fast
def test_report_files(tmp_path):
    results = run(**{"gptq-w4": ("passed", 0.89, 1.2, 50.0), "rtn-w2": ("failed", 0.5, 0.7, 90.0)})
    regressions = write_report(tmp_path, results, previous=run(**{"gptq-w4": ("passed", 0.95, 1.2, 50.0)}))
    assert [r.what for r in regressions] == ["t/acc"]
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.index("Regressions") < markdown.index("## Variants")
    assert "`gptq-w4`" in markdown and (tmp_path / "quality_vs_size.png").is_file()
    assert (tmp_path / "quality_vs_speed.png").is_file()
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_html_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    results = run(**{"gptq-w4": ("passed", 0.89, 1.2, 50.0), "rtn-w2": ("failed", 0.5, 0.7, 90.0)})
    write_report(tmp_path, results)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    page = (tmp_path / "report.html").as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "gptq-w4" in dom and "rtn-w2" in dom and dom.count("<img") == 2
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,1600", page],
        capture_output=True,
        timeout=120,
        check=False,
    )
    image = Image.open(shot).convert("RGB")
    pixels = list(image.getdata())
    dark = sum(1 for r, g, b in pixels if r + g + b < 200)
    assert dark > 1000  # text and table borders were drawn: not a blank page
    frontier_blue = sum(1 for r, g, b in pixels if abs(r - 31) < 30 and abs(g - 119) < 30 and abs(b - 180) < 30)
    assert frontier_blue > 50  # the plots' Pareto line is on screen: the embedded images loaded


@pytest.mark.fast
def test_inconclusive_is_shown_counted_flagged_and_never_recommended(tmp_path):
    results = run(**{"gptq-w4": ("inconclusive", 0.95, 0.5, 99.0), "int8-w8": ("passed", 0.9, 2.1, 80.0)})
    write_report(tmp_path, results, previous=run(**{"gptq-w4": ("passed", 0.95, 0.5, 99.0)}))
    markdown = (tmp_path / "report.md").read_text()
    assert "Verdicts: 1 passed, 1 inconclusive." in markdown
    assert "| gptq-w4 | gptq | - | inconclusive |" in markdown
    assert "<td class='inconclusive'>inconclusive</td>" in (tmp_path / "report.html").read_text()
    recs = {r.use_case: r.variant for r in recommend(results)}
    assert "gptq-w4" not in recs.values()  # smaller and faster, but not passed
    (flip,) = find_regressions(run(**{"gptq-w4": ("passed", 0.95, 0.5, 99.0)}), results)
    assert (flip.what, flip.before, flip.after) == ("verdict", "passed", "inconclusive")
