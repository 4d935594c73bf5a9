"""Reports: Pareto frontier, recommendation, regressions, and a report that renders in a browser."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess

import pytest

from quantmill.record import RunRecord
from quantmill.report.compare import find_regressions
from quantmill.report.pareto import Point, pareto_frontier
from quantmill.report.recommend import recommend
from quantmill.report.render import write_report
from tests.report.records import metric, run, run_json


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
    assert recs["accuracy-critical use"].variant == "int8-w8"  # 0.9 against the baseline's 0.9: no loss


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


def _accuracy_critical(results: RunRecord):
    (found,) = [r for r in recommend(results) if r.use_case == "accuracy-critical use"]
    return found


@pytest.mark.fast
def test_recovery_within_noise_of_one_is_no_measurable_loss():
    # baseline t/acc 0.9 ± 0.02; each variant ± 0.02, so the noise is their combined stderr ≈ 0.028
    results = run(
        **{
            "gptq-w4": ("passed", 0.92, 1.2, 50.0),  # recovery 1.022
            "awq-w4": ("passed", 0.90, 1.1, 50.0),  # recovery 1.000
            "int8-w8": ("passed", 0.88, 2.1, 80.0),  # recovery 0.978, 0.02 short: within noise
            "rtn-w4": ("passed", 0.85, 1.0, 60.0),  # 0.05 short: a loss beyond noise
            "rtn-w2": ("failed", 0.95, 0.7, 90.0),  # best of all, but failed a gate: never recommended
        }
    )
    found = _accuracy_critical(results)
    assert found.variant == "gptq-w4"  # the best quality among the passing variants without a measurable loss
    assert found.reason.startswith("no measurable loss in t/acc (recovery 1.022")
    assert "also without measurable loss: awq-w4, int8-w8" in found.reason
    assert "rtn-w4" not in found.reason and "rtn-w2" not in found.reason
    assert "lost" not in found.reason


@pytest.mark.fast
def test_a_loss_beyond_noise_keeps_the_unquantized_model():
    results = run(
        **{
            "gptq-w4": ("passed", 0.86, 1.2, 50.0),  # 0.04 short of 0.9, beyond the noise ≈ 0.028
            "rtn-w4": ("passed", 0.80, 1.0, 60.0),
            "rtn-w2": ("failed", 0.5, 0.7, 90.0),
        }
    )
    found = _accuracy_critical(results)
    assert found.variant is None
    assert found.reason.startswith("keep the unquantized model; every passing variant lost t/acc beyond noise")
    assert "(the closest, gptq-w4: recovery 0.956, t/acc 0.86 vs 0.9 ± 0.028)" in found.reason
    assert found.reason.endswith("(1 variant(s) did not pass their gates)")


def _frontier(fig):
    lines = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("Pareto frontier")]
    return [tuple(xy) for line in lines for xy in line.get_xydata()]


@pytest.mark.fast
def test_the_pareto_frontier_runs_through_passing_variants_only():
    from quantmill.report.plots import quality_figure

    results = run(
        **{
            "rtn-w2": ("failed", 0.95, 0.7, 90.0),  # smaller and better than every other: dominates them all
            "gptq-w4": ("passed", 0.89, 1.2, 50.0),
            "int8-w8": ("passed", 0.9, 2.1, 80.0),
            "awq-w4": ("passed", 0.85, 1.3, 50.0),  # dominated by gptq-w4
            "hqq-w3": ("inconclusive", 0.92, 1.0, 70.0),
        }
    )
    assert _frontier(quality_figure(results, "size_mb")) == [(1.2, 0.89), (2.1, 0.9)]
    assert _frontier(quality_figure(results, "decode_tok_s")) == [(80.0, 0.9)]  # int8-w8 is faster and better
    nothing_passed = run(**{"rtn-w2": ("failed", 0.5, 0.7, 90.0), "hqq-w3": ("inconclusive", 0.9, 1.0, 70.0)})
    assert _frontier(quality_figure(nothing_passed, "size_mb")) == []


@pytest.mark.fast
@pytest.mark.parametrize("cost", ["size_mb", "decode_tok_s"])
def test_labels_never_overlap_even_when_points_crowd(cost):
    """Twelve variants of nearly the same size and quality, plus one far away: every text of the plot
    (labels, legend, title, axis labels) has a bounding box that intersects no other."""
    from matplotlib.text import Text

    from quantmill.report.plots import quality_figure

    crowd = {
        f"gptq-w4-g{i:03d}": (
            "passed" if i % 3 else "failed",
            0.88 + (i * 7 % 12) * 0.0002,
            1.2 + i * 1e-5,
            50 + i * 0.01,
        )
        for i in range(12)
    }
    results = run(**crowd, **{"int8-w8": ("passed", 0.9, 3.0, 10.0)})
    fig = quality_figure(results, cost)
    fig.canvas.draw()  # as savefig does: positions are those of the written file
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(results.variants)  # every variant labelled
    texts = [*ax.texts, ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_legend().get_texts()]
    boxes = {t.get_text(): Text.get_window_extent(t, renderer) for t in texts}  # the text alone, not its leader
    overlapping = [(a, b) for a, b in itertools.combinations(boxes, 2) if boxes[a].overlaps(boxes[b])]
    assert overlapping == []
    inside = ax.get_window_extent(renderer)
    assert all(
        inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
        for box in (Text.get_window_extent(t, renderer) for t in ax.texts)
    )


@pytest.mark.fast
def test_a_figure_is_drawn_once_for_the_same_numbers(tmp_path, monkeypatch, request):
    """A run that draws what an earlier one drew gets the earlier file; a changed status is drawn anew."""
    from quantmill.report import plots
    from quantmill.settings import get_settings

    monkeypatch.setenv("QUANTMILL_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)  # later tests read the environment as it was
    variants = {"gptq-w4": ("passed", 0.89, 1.2, 50.0), "rtn-w2": ("failed", 0.7, 0.7, 90.0)}
    first, second, changed = tmp_path / "first", tmp_path / "second", tmp_path / "changed"
    for folder in (first, second, changed):
        folder.mkdir()
    drawn = plots.plot(run(**variants), first, "size_mb")
    assert drawn is not None

    def no_drawing(*args, **kwargs):
        raise AssertionError("drew the same figure again")

    monkeypatch.setattr(plots, "quality_figure", no_drawing)
    again = plots.plot(run(**variants), second, "size_mb")
    assert again is not None and again.read_bytes() == drawn.read_bytes()
    with pytest.raises(AssertionError, match="drew the same figure again"):  # a verdict changed: a new figure
        plots.plot(run(**variants | {"rtn-w2": ("passed", 0.7, 0.7, 90.0)}), changed, "size_mb")
    assert plots.figure_digest(run(**variants), "size_mb") != plots.figure_digest(run(**variants), "decode_tok_s")


@pytest.mark.fast
def test_report_links_each_existing_log(tmp_path):
    results = run(**{"gptq-w4": ("passed", 0.89, 1.2, 50.0), "rtn-w2": ("failed", 0.5, 0.7, 90.0)})
    (tmp_path / "logs").mkdir()
    for name in ("baseline", "gptq-w4"):  # rtn-w2 has no log (say, it never started)
        (tmp_path / "logs" / f"{name}.log").write_text("...")
    write_report(tmp_path, results)
    page = (tmp_path / "report.html").read_text()
    assert "<p>Baseline: <a href='logs/baseline.log'>log</a>.</p>" in page
    (gptq_row,) = [line for line in page.splitlines() if ">gptq-w4</td>" in line]
    assert gptq_row.endswith("<td><a href='logs/gptq-w4.log'>log</a></td></tr>")
    (rtn_row,) = [line for line in page.splitlines() if ">rtn-w2</td>" in line]
    assert rtn_row.endswith("<td>-</td></tr>")
    markdown = (tmp_path / "report.md").read_text()
    assert "[Baseline log](logs/baseline.log)" in markdown
    (gptq_row,) = [line for line in markdown.splitlines() if line.startswith("| gptq-w4 |")]
    assert gptq_row.endswith("| [log](logs/gptq-w4.log) |")
    for href in re.findall(r"href='([^']+)'", page):
        assert (tmp_path / href).is_file()  # relative to the report: the links work wherever the run is copied
