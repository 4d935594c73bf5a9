"""The grouped GGUF repo: every accepted GGUF type of a recipe in one ``{model}-GGUF`` repo.

Files keep llama.cpp's names, ``<model>-<TYPE>.gguf``, so ``llama-cli -hf <repo>:<TYPE>``
and Ollama's ``hf.co/<repo>:<TYPE>`` resolve them (:func:`tag_file` is llama.cpp's rule).
A run publishes the group as one commit, its card a table of the files with the run's
numbers. The card's metadata keeps each file's row (``quantmill.files``), so:

- a type this run did not measure (``--only``) keeps its file and its row as they were;
- a type this run measured and did not accept is removed, file and row, in that commit
  (a repo of downloadable files lists only what passed its gates when last measured),
  unless the publish forces it (``quantmill publish RUN --force VARIANT``, any number of them).

A file above the operator's ``gguf_split_max_mb`` is published as llama.cpp shards
(:mod:`quantmill.publish.gguf_split`); its row is named by the first shard, the one
llama.cpp loads and ``:TYPE`` resolves to, lists every shard (``files``) and keeps the
evaluated file's size and hash.

The pipeline publishes variant by variant: the first GGUF variant of a run commits the
whole group; its siblings then find exactly that content, put there by a commit whose
message names their run, and report that commit (the repo says so, whichever process asks).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Collection, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from quantmill.errors import PublishError
from quantmill.filehash import sha256_of
from quantmill.metrics import metric_direction
from quantmill.publish.card import hub_base_model, search_section
from quantmill.publish.gguf_split import repo_names, split
from quantmill.publish.publisher import (
    card_license,
    commit_unless_present,
    holds,
    is_grouped,
    publishable,
    repo_id_for,
    upload_files,
)
from quantmill.publish.sandbox import render_model_card
from quantmill.publish.targets import Target, quantmill_metadata
from quantmill.quantize import PROVENANCE_FILE, read_artifact
from quantmill.recipe.load import LoadedRecipe
from quantmill.record import PublishOutcome, PublishStatus, RunRecord, VariantStatus
from quantmill.report.quality import quality_metric, recovery

#: the recovery the "smallest file" recommendation asks for when no gate sets one on the quality metric
DEFAULT_RECOVERY = 0.99


def tag_file(files: Iterable[str], tag: str) -> str | None:
    """The file llama.cpp's ``-hf repo:TAG`` downloads (common/download.cpp ``find_best_model``): the first
    ``.gguf`` whose path contains ``TAG.`` or ``TAG-`` (any case), skipping imatrix/mmproj files and
    shards after the first; Ollama's ``hf.co/repo:TAG`` asks the Hub, which matches the same way."""
    pattern = re.compile(re.escape(tag) + r"[.-]", re.IGNORECASE)
    for path in files:
        name = path.rsplit("/", 1)[-1]
        if not name.endswith(".gguf") or any(k in name for k in ("mmproj", "imatrix", "mtp-")):
            continue
        shard = re.search(r"-(\d{5})-of-(\d{5})\.gguf$", name, re.IGNORECASE)
        if pattern.search(path) and (shard is None or int(shard.group(1)) == 1):
            return path
    return None


def measured_row(
    record: RunRecord, variant_id: str, quality: str | None, files: list[str], sha256: str
) -> dict[str, Any]:
    """One file's row, every number as the run recorded it (``results.json``), the recovery as the
    run's report computes it; ``files``: what the repo holds of it (the file, or its shards)."""
    entry = record.variants[variant_id]
    assert entry.evaluation is not None and entry.artifact is not None
    evaluation, baseline = entry.evaluation, record.baseline_evaluation()
    provenance = read_artifact(entry.artifact).provenance
    value = evaluation.metrics.get(quality) if quality else None
    reference = baseline.metrics.get(quality) if baseline and quality else None
    return {
        "variant": variant_id,
        "type": str(provenance["parameters"]["type"]).upper(),
        "files": files,
        "size_mb": evaluation.value("size_mb"),
        "bits_per_weight": evaluation.value("bits_per_weight"),
        "quality": value.value if value else None,
        "recovery": recovery(value, reference) if value and reference else None,
        "recovery_is": RECOVERY_IS,
        "ppl": evaluation.value("ppl"),
        "kld": evaluation.value("kld"),
        "decode_tok_s": evaluation.value("decode_tok_s"),
        "verdict": entry.status.value,
        "sha256": sha256,
        "imatrix": _imatrix_of(provenance),
    }


#: how a row's recovery is defined (the report's); rows from cards before it was recorded used baseline / value
#: for a metric where lower is better
RECOVERY_IS = "value / baseline"


def _as_recorded_now(row: dict[str, Any], quality: str | None) -> dict[str, Any]:
    """A row kept from an earlier card, its recovery in today's definition (:data:`RECOVERY_IS`)."""
    if row.get("recovery_is") == RECOVERY_IS or not row.get("recovery") or not quality:
        return row
    lower = metric_direction(quality) == "lower"
    return row | {"recovery": 1 / row["recovery"] if lower else row["recovery"], "recovery_is": RECOVERY_IS}


def _imatrix_of(provenance: dict[str, Any]) -> dict[str, Any] | None:
    """The importance matrix a file was quantized with, as a card may show it (the dataset's name, not its path)."""
    used = (provenance.get("details") or {}).get("imatrix")
    if not used:
        return None
    return {"dataset": Path(used["dataset"]).name, "samples": used["samples"], "fingerprint": used["fingerprint"]}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _required_recovery(loaded: LoadedRecipe, quality: str | None) -> float:
    rules = [g.min_recovery for g in loaded.recipe.gates if g.metric == quality and g.min_recovery is not None]
    return rules[0] if rules else DEFAULT_RECOVERY


def recommendations(rows: dict[str, dict], quality: str | None, required: float) -> tuple[list[str], str | None]:
    """Which file to take, from the rows' numbers: the smallest that keeps ``required`` of the baseline,
    and the one closest to the baseline; with the file to show in the usage snippet (the first of them).

    Recovery is value / baseline for every metric; for one where lower is better (perplexity)
    keeping ``required`` of the baseline's quality means a recovery of at most 1 / ``required``."""
    measured = {f: r for f, r in rows.items() if r["recovery"] is not None and r["size_mb"] is not None}
    if not measured:
        return ["quality or size was not measured for these files: no recommendation"], None
    lower = metric_direction(quality) == "lower" if quality else False
    sign = -1 if lower else 1
    out = []
    keeping = [f for f, r in measured.items() if sign * r["recovery"] >= sign * (1 / required if lower else required)]
    smallest = min(keeping, key=lambda f: (measured[f]["size_mb"], f)) if keeping else None
    if smallest:
        out.append(
            f"**Smallest that keeps ≥ {required:.0%} of the baseline's {quality}**: `{smallest}` "
            f"({_fmt(measured[smallest]['size_mb'])} MB, recovery {_fmt(measured[smallest]['recovery'])})"
        )
    else:
        out.append(f"No file keeps ≥ {required:.0%} of the baseline's {quality}.")
    closest = max(measured, key=lambda f: (sign * measured[f]["recovery"], -measured[f]["size_mb"], f))
    out.append(
        f"**Closest to the baseline**: `{closest}` (recovery {_fmt(measured[closest]['recovery'])}, "
        f"{_fmt(measured[closest]['size_mb'])} MB)"
    )
    return out, smallest or closest


def table_rows(rows: dict[str, dict]) -> list[list[str]]:
    """The card's files table, smallest file first (a size not measured sorts last)."""
    order = sorted(rows, key=lambda f: (rows[f]["size_mb"] is None, rows[f]["size_mb"] or 0, f))
    return [
        [
            f"`{file}`",
            rows[file]["type"],
            *(_fmt(rows[file][k]) for k in ("size_mb", "bits_per_weight", "quality", "recovery", "ppl", "kld")),
            _fmt(rows[file]["decode_tok_s"]),
            rows[file]["verdict"],
        ]
        for file in order
    ]


TABLE_HEADER = [
    "file",
    "type",
    "size (MB)",
    "bits per weight",
    "quality",
    "recovery",
    "perplexity",
    "KLD",
    "decode (tokens/s)",
    "verdict",
]


def _imatrix_text(rows: dict[str, dict]) -> str:
    used = {json.dumps(r["imatrix"], sort_keys=True) for r in rows.values() if r.get("imatrix")}
    if not used:
        return "none: no file here was quantized with an importance matrix"
    described = [json.loads(u) for u in sorted(used)]
    users = sorted(f for f, r in rows.items() if r.get("imatrix"))
    return (
        "; ".join(
            f"{m['samples']} samples of `{m['dataset']}` (fingerprint `{m['fingerprint'][:16]}`)" for m in described
        )
        + f", in `imatrix.gguf`, used by {', '.join(f'`{u}`' for u in users)}"
    )


def _group_files(record: RunRecord, members: list[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """Each member's files (the imatrix once; no provenance file) and which member each GGUF file is."""
    files: dict[str, Path] = {}
    owners: dict[str, str] = {}
    for variant_id in members:
        artifact = record.variants[variant_id].artifact
        assert artifact is not None
        for name, path in upload_files(artifact).items():
            if name == PROVENANCE_FILE:
                continue
            if name in files and sha256_of(files[name]) != sha256_of(path):
                raise PublishError(f"{name} differs between GGUF variants of this run; they cannot share one repo")
            files[name] = path
            if name.endswith(".gguf") and name != "imatrix.gguf":
                owners[name] = variant_id
    return files, owners


def publish_group(
    loaded: LoadedRecipe, record: RunRecord, variant_id: str, target: Target, *, forced: Collection[str] = ()
) -> PublishOutcome:
    """Publish the grouped GGUF repo ``variant_id`` belongs to: every accepted GGUF type of ``record``
    bound for that repo plus the ``forced`` ones, in one commit, or nothing when the repo already holds
    exactly this.

    Outcome: ``published`` with the commit that put this content there when that commit was this
    run's (by this call or by a sibling's), else ``unchanged`` (an earlier run published the same).

    Raises:
        PublishError: the license is unknown, two variants' shared files differ, a file could not
            be split faithfully, or the commit failed.
    """
    variant = loaded.variant(variant_id)
    repo_id = repo_id_for(loaded, variant)
    in_repo = [
        v
        for v in publishable(record.variants, list(forced))
        if is_grouped(loaded, loaded.variant(v)) and repo_id_for(loaded, loaded.variant(v)) == repo_id
    ]
    files, owners = _group_files(record, in_repo)
    layout = {name: repo_names(name, files[name]) for name in owners}  # the file, or its shards
    quality = quality_metric(record)
    rows = {layout[f][0]: measured_row(record, v, quality, layout[f], sha256_of(files[f])) for f, v in owners.items()}
    previous = quantmill_metadata(target.read_card(repo_id))
    present = target.files(repo_id)
    # types this run did not measure keep their files and row; measured ones are this run's
    kept = {
        f: _as_recorded_now(row, quality)
        for f, row in (previous.get("files") or {}).items()
        if row.get("variant") not in record.variants and set(_row_files(f, row)) <= present and f not in rows
    }
    rows = dict(sorted((rows | kept).items()))  # one order, so a rerun renders the same card
    keep = {n for f, row in kept.items() for n in _row_files(f, row)}
    keep |= {"imatrix.gguf"} & present if any(r.get("imatrix") for r in kept.values()) else set()
    names = {n for f in files for n in layout.get(f, [f])}  # what this commit uploads
    text, print_ = _card(loaded, record, repo_id, rows, quality, names, keep)
    types = ", ".join(sorted(r["type"] for r in rows.values()))
    unaccepted = [v for v in in_repo if record.variants[v].status != VariantStatus.PASSED]
    message = f"quantmill: GGUF {types} from recipe {loaded.name}" + (" [forced]" if unaccepted else "")
    message += f" ({_run_mark(record.run_id)})"
    commit = None
    if not holds(target, repo_id, print_, [*names, *keep]):  # shards are made only for a commit
        with tempfile.TemporaryDirectory(prefix=".publish-split-", dir=_staging_parent(files)) as staging:
            uploads = {n: p for f, p in files.items() for n, p in _uploads(f, p, layout.get(f, [f]), Path(staging))}
            commit = commit_unless_present(
                target,
                repo_id,
                uploads,
                text,
                print_,
                message,
                loaded.recipe.publish,
                loaded.name,
                keep=sorted(keep - names),
            )
    if commit is None:
        commit = _commit_of_run(target, repo_id, record.run_id)
    if commit is None:
        return PublishOutcome(
            status=PublishStatus.UNCHANGED,
            variant=variant_id,
            repo_id=repo_id,
            url=target.url(repo_id),
            fingerprint=print_,
        )
    publish = loaded.recipe.publish
    collection = None
    if publish.collection:
        note = f"GGUF: {', '.join(r['type'] for r in rows.values())}"
        collection = target.add_to_collection(publish.namespace, publish.collection, repo_id, note)
    return PublishOutcome(
        status=PublishStatus.PUBLISHED,
        variant=variant_id,
        repo_id=repo_id,
        url=target.url(repo_id),
        fingerprint=print_,
        commit=commit,
        collection=collection,
    )


def _row_files(file: str, row: dict) -> list[str]:
    """The repo files of a card row (rows written before shards existed name one file: their own)."""
    return list(row.get("files") or [file])


def _run_mark(run_id: str) -> str:
    """How a commit message names the run that made it."""
    return f"run {run_id}"


def _commit_of_run(target: Target, repo_id: str, run_id: str) -> str | None:
    """The repo's latest commit when this run made it: called when the repo already holds what the run
    would commit, so that commit put this run's content there (a sibling GGUF variant's publish, in
    whichever process). Read from the repo, not remembered in this process, so it holds across
    processes, retries and concurrent publishing tasks."""
    last = target.last_commit(repo_id)
    return last[0] if last is not None and last[1].endswith(f"({_run_mark(run_id)})") else None


def _staging_parent(files: dict[str, Path]) -> Path:
    """Where shards are written: beside the artifacts they are split from (the same disk, with room for them)."""
    return next(iter(files.values())).parent.parent


def _uploads(name: str, path: Path, names: list[str], staging: Path) -> list[tuple[str, Path]]:
    """The files uploaded for ``name``: itself, or its shards split into ``staging``."""
    return [(name, path)] if names == [name] else list(split(name, path, names, staging).items())


def _search_winner_section(loaded: LoadedRecipe, record: RunRecord, rows: dict[str, dict]) -> dict[str, str]:
    """The per-variant card's "Found by search" section, naming the file of the run's search winner when the
    repo holds it (a forced loser of the search, or a file of an earlier run, was not found by this search)."""
    from quantmill.plan import variant_setting

    winner = record.search.winner if record.search else None
    file = next((f for f, row in rows.items() if winner is not None and row.get("variant") == winner), None)
    if winner is None or file is None:
        return {}
    return search_section(loaded, f"`{file}` (variant `{winner}`, {variant_setting(loaded.variant(winner))})")


def _card(
    loaded: LoadedRecipe,
    record: RunRecord,
    repo_id: str,
    rows: dict[str, dict],
    quality: str | None,
    names: set[str],
    keep: set[str],
) -> tuple[str, str]:
    """The grouped repo's card text and its fingerprint (of the card, whose rows carry every file's hash)."""
    from huggingface_hub import ModelCardData

    base_model = hub_base_model(loaded)
    assert record.model is not None
    data = ModelCardData(
        base_model=base_model,
        base_model_relation="quantized" if base_model else None,
        quantized_by="quantmill",
        library_name="gguf",
        pipeline_tag="text-generation",
        license=card_license(loaded),
        tags=["quantmill", "gguf", *sorted({r["type"] for r in rows.values()})],
        model_name=repo_id.split("/")[-1],
        quantmill={"recipe": loaded.name, "recipe_sha256": loaded.sha256, "quality_metric": quality, "files": rows},
    )
    advice, pick = recommendations(rows, quality, _required_recovery(loaded, quality))
    tag = rows[pick]["type"] if pick else next(iter(rows.values()))["type"]
    template = resources.files("quantmill").joinpath("templates/gguf_repo_card.md.j2").read_text()
    card = render_model_card(
        data,
        template,
        repo_name=repo_id.split("/")[-1],
        model=loaded.recipe.model.id,
        revision=record.model.revision,
        header=TABLE_HEADER,
        table=table_rows(rows),
        quality=quality or "n/a",
        recommendations=advice,
        imatrix=_imatrix_text(rows),
        split=[f"`{f}` ({len(_row_files(f, r))} shards)" for f, r in rows.items() if len(_row_files(f, r)) > 1],
        repo_id=repo_id,
        tag=tag,
        recipe_name=loaded.name,
        recipe_sha256=loaded.sha256[:16],
        extras=_search_winner_section(loaded, record, rows),
    )
    # the card holds each GGUF file's hash, and the imatrix's calibration fingerprint (it is made from nothing else)
    print_ = hashlib.sha256("\0".join([str(card), *sorted({*names, *keep})]).encode()).hexdigest()
    card.data.quantmill = {**card.data.quantmill, "fingerprint": print_}
    return str(card), print_
