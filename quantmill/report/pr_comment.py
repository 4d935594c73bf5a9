"""The results table a recipe pull request gets as a comment, with every cell escaped.

Everything in it may come from an untrusted recipe or from the pull request's code that ran
it: variant ids, error texts, the recipe's name. Each cell is made inert for GitHub's Markdown:
nothing can end the cell (``|``), open code, emphasis, links or HTML (``<script>``), mention
someone (``@team``) or reference an issue (``#1``). The workflow (infra/github/recipes.yml) runs
this module with the base branch's quantmill, never the pull request's::

    python -m quantmill.report.pr_comment --outcome failure RESULTS_DIR comment.md

``RESULTS_DIR`` holds the runs' ``results.json`` files at any depth (the run job's artifact).
"""

from __future__ import annotations

import argparse
import unicodedata
from pathlib import Path

from quantmill.errors import QuantmillError
from quantmill.record import RunRecord
from quantmill.report.render import COLUMNS, rows, status_counts
from quantmill.runstore import Run

MARKER = "<!-- quantmill-results -->"  # finds the comment to update instead of adding one per run
TABLE_COLUMNS = ("variant", "status", "quality", "recovery", "ppl", "size MB", "bits/w", "unmet rule / error")
MAX_CELL_CHARS = 300  # an error text can be a whole traceback
MAX_BODY_CHARS = 60_000  # GitHub refuses comments over 65,536 characters
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-+=%()/")
_ZERO_WIDTH_SPACE = "\u200b"


def escape_cell(text: str) -> str:
    """``text`` as inert Markdown for one table cell, at most ``MAX_CELL_CHARS`` characters of it.

    ASCII letters, digits and a few harmless punctuation marks stay; line breaks become spaces;
    control and format characters (bidirectional overrides included) become U+FFFD; other
    non-ASCII characters stay (none is Markdown syntax); every other ASCII character becomes a
    numeric HTML entity, and ``@`` and ``#`` are also followed by a zero-width space, since GitHub
    finds mentions and issue references after entities are decoded.
    """
    clipped = text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"
    out = []
    for char in clipped:
        if char in _PLAIN:
            out.append(char)
        elif char in "\r\n\t":
            out.append(" ")
        elif unicodedata.category(char).startswith("C"):
            out.append("\ufffd")
        elif not char.isascii():
            out.append(char)
        else:
            out.append(f"&#{ord(char)};" + (_ZERO_WIDTH_SPACE if char in "@#" else ""))
    return "".join(out)


def results_table(record: RunRecord) -> str:
    """One run as a heading and a Markdown table (the report's columns a reviewer needs), all escaped."""
    keep = [COLUMNS.index(column) for column in TABLE_COLUMNS]
    lines = [
        f"#### {escape_cell(record.recipe)}: {escape_cell(status_counts(record))}",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    lines += ["| " + " | ".join(escape_cell(row[i]) or " " for i in keep) + " |" for row in rows(record)]
    return "\n".join(lines)


def comment_body(results_dir: Path, outcome: str) -> str:
    """The whole comment: the marker, the run job's outcome, and a table per ``results.json`` found."""
    parts = [MARKER, f"### quantmill run: {escape_cell(outcome)}", ""]
    found = sorted(results_dir.rglob("results.json")) if results_dir.is_dir() else []
    if not found:
        parts.append("The run produced no results (see the job's log).")
    for path in found:
        try:
            parts += [results_table(Run(path.parent).read_record()), ""]
        except (QuantmillError, OSError, ValueError) as error:
            where = path.relative_to(results_dir).as_posix()
            parts += [f"{escape_cell(where)} could not be read: {escape_cell(str(error))}", ""]
    body = "\n".join(parts)
    if len(body) > MAX_BODY_CHARS:  # cut at a line end, so no row is half written
        body = body[: body.rfind("\n", 0, MAX_BODY_CHARS)] + "\n\n(cut: too long for a comment)"
    return body + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantmill.report.pr_comment", description=__doc__)
    parser.add_argument("results_dir", type=Path, help="folder with the runs' results.json files (any depth)")
    parser.add_argument("out", type=Path, help="where to write the comment's Markdown")
    parser.add_argument("--outcome", default="finished", help="the run job's result, shown in the heading")
    args = parser.parse_args(argv)
    args.out.write_text(comment_body(args.results_dir, args.outcome), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
