"""The results comment of a recipe pull request: hostile text stays inert, and the workflow posts it safely."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

from quantmill.record import RunRecord
from quantmill.report.pr_comment import MARKER, TABLE_COLUMNS, comment_body, escape_cell, results_table
from quantmill.runstore import Run
from tests.report.records import run_json

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "infra" / "github" / "recipes.yml"

HOSTILE = [
    "a | b || c",
    "`rm -rf /` and ```fence```",
    "<script>alert(1)</script><img src=x onerror=alert(2)>",
    "ping @octocat and @org/team, fixes #12",
    "[click](https://evil.example) ![x](y) <https://evil.example>",
    "**bold** _em_ ~~gone~~ $x^2$ \\| &amp; &#124;",
    "line one\nline two\r\n| --- |",
    "right-to-left \u202eevil\u202c and a NUL \x00",
]

# GitHub's Markdown with what it does to a comment: tables, raw HTML passed through, code, links
GITHUB_LIKE = MarkdownIt("commonmark").enable("table")


def _shown(escaped: str) -> str:
    """What a reader sees: entities decoded, the zero-width spaces that break mentions dropped."""
    return html.unescape(escaped).replace("\u200b", "")


@pytest.mark.fast
@pytest.mark.parametrize("text", HOSTILE)
def test_escaped_cells_are_inert_and_read_as_typed(text):
    escaped = escape_cell(text)
    assert re.fullmatch(r"(?:[A-Za-z0-9 .,:;\-+=%()/]|&#\d+;|[^\x00-\x7f])*", escaped), escaped
    expected = re.sub(r"[\r\n\t]", " ", text).replace("\u202e", "\ufffd").replace("\u202c", "\ufffd")
    assert _shown(escaped) == expected.replace("\x00", "\ufffd")
    assert not re.search(r"[@#][A-Za-z0-9]", html.unescape(escaped))  # no mention, no issue reference


@pytest.mark.fast
def test_a_hostile_table_renders_as_plain_text_in_its_own_cells():
    record = run_json(**{"gptq-w4": ("failed", 0.5, 1.2, 50.0), "int8-w8": ("passed", 0.9, 2.1, 80.0)})
    record["recipe"] = "demo <b>|</b> @admins"
    record["variants"]["gptq-w4"]["error"] = " ".join(HOSTILE)
    table = results_table(RunRecord.model_validate(record))
    rendered = GITHUB_LIKE.render(table)
    rows = re.findall(r"<tr>(.*?)</tr>", rendered, flags=re.S)
    assert len(rows) == 3  # header and two variants: no row was split or added
    assert all(row.count("<td>") == len(TABLE_COLUMNS) for row in rows[1:])
    assert not re.search(r"<(script|img|a|code|strong|em|del|b)\b", rendered)  # no tag but the table's own
    assert "gptq-w4" in rows[1] and "failed" in rows[1]
    assert "<script>alert(1)</script>" in html.unescape(re.sub(r"<[^>]+>", "", rendered))  # shown, as text
    assert rendered.startswith("<h4>demo &lt;b&gt;|&lt;/b&gt; @\u200badmins: 1 passed, 1 failed</h4>")


@pytest.mark.fast
def test_long_error_texts_are_cut():
    assert _shown(escape_cell("x" * 1000)) == "x" * 299 + "…"


def _write_run(folder: Path, record: dict) -> None:
    folder.mkdir(parents=True)
    Run(folder).write_record(RunRecord.model_validate(record))


@pytest.mark.fast
def test_comment_body_covers_every_run_and_says_what_could_not_be_read(tmp_path):
    _write_run(tmp_path / "demo" / "20261201T000000Z-a", run_json(**{"gptq-w4": ("failed", 0.5, 1.2, 50.0)}))
    broken = tmp_path / "other" / "20261201T000000Z-b" / "results.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json <script>")
    body = comment_body(tmp_path, "run job failure")
    assert body.startswith(MARKER + "\n### quantmill run: run job failure\n")
    assert "| gptq-w4 | failed |" in body
    assert "other/20261201T000000Z-b/results.json could not be read" in body
    assert "<script>" not in body
    assert "produced no results" in comment_body(tmp_path / "missing", "run job failure")


def _jobs() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]


@pytest.mark.fast
def test_no_expression_is_pasted_into_a_shell_or_a_script():
    """``${{ }}`` in a run: or script: line is expanded into the command before it runs: text from the
    pull request (a branch name, a title) would become code. Values go through env: and files."""
    for name, job in _jobs().items():
        for step in job["steps"]:
            for code in (step.get("run", ""), step.get("with", {}).get("script", "")):
                assert "${{" not in code, (name, step.get("name"))


@pytest.mark.fast
def test_the_results_are_posted_even_when_the_run_fails():
    jobs = _jobs()
    (upload,) = [s for s in jobs["run-recipe"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert upload["if"].startswith("always()")  # exit 3 fails the run step; the results still leave the job
    table = jobs["results-table"]
    assert table["needs"] == "run-recipe"
    assert "needs.run-recipe.result == 'failure'" in table["if"] and "!cancelled()" in table["if"]
    comment = jobs["results-comment"]
    assert comment["needs"] == "results-table" and "needs.results-table.result == 'success'" in comment["if"]


@pytest.mark.fast
def test_the_table_is_escaped_by_base_code_and_posted_by_a_job_that_runs_none():
    jobs = _jobs()
    table = jobs["results-table"]
    assert table["permissions"] == {"contents": "read"}
    checkout = table["steps"][0]
    assert checkout["uses"].startswith("actions/checkout")
    assert checkout["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"  # not the pull request's code
    (download,) = [s for s in table["steps"] if s.get("uses", "").startswith("actions/download-artifact")]
    assert download["with"]["path"].startswith("${{ runner.temp }}")  # outside the checkout it runs
    comment = jobs["results-comment"]
    text = json.dumps(comment)
    assert comment["permissions"] == {"pull-requests": "write"}
    assert "checkout" not in text and "pip install" not in text and '"run"' not in text
    script = comment["steps"][-1]["with"]["script"]
    assert MARKER in script and "updateComment" in script  # one comment, updated on every run


@pytest.mark.fast
def test_the_render_step_writes_the_comment(tmp_path):
    """The results-table job's render step, run as the runner would (bash, its env), on a failed run."""
    (step,) = [s for s in _jobs()["results-table"]["steps"] if "pr_comment" in s.get("run", "")]
    results = tmp_path / "recipe-run"
    record = run_json(**{"gptq-w4": ("failed", 0.5, 1.2, 50.0)})
    record["variants"]["gptq-w4"]["error"] = "`$(touch pwned)` | <script>"
    _write_run(results / "demo" / "20261201T000000Z-a", record)
    env = {
        **os.environ,
        "RUN_OUTCOME": "failure",
        "RESULTS_DIR": str(results),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
    }
    subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, env=env, check=True, timeout=120)
    body = (tmp_path / "results-comment.md").read_text()
    assert body.startswith(MARKER + "\n### quantmill run: run job failure\n")
    assert "&#96;&#36;(touch pwned)&#96; &#124; &#60;script&#62;" in body
    assert not (tmp_path / "pwned").exists()
