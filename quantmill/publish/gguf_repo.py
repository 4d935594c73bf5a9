"""The grouped GGUF repo: every accepted GGUF type of a recipe in one ``{model}-GGUF`` repo.

Files keep llama.cpp's names, ``<model>-<TYPE>.gguf``, so ``llama-cli -hf <repo>:<TYPE>``
and Ollama's ``hf.co/<repo>:<TYPE>`` resolve them (:func:`tag_file` is llama.cpp's rule).
A run publishes the group as one commit, its card a table of the files with the run's
numbers. The card's metadata keeps each file's row (``quantmill.files``), so:

- a type this run did not measure (``--only``) keeps its file and its row as they were;
- a type this run measured and did not accept is removed, file and row, in that commit
  (a repo of downloadable files lists only what passed its gates when last measured).

The pipeline publishes variant by variant: the first GGUF variant of a run commits the
whole group; its siblings then find exactly that content and report the same commit.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from quantmill.errors import PublishError
from quantmill.publish.card import hub_base_model
from quantmill.publish.publisher import (
    card_license,
    commit_unless_present,
    file_sha256,
    is_grouped,
    publishable,
    repo_id_for,
    upload_files,
)
from quantmill.publish.sandbox import render_model_card
from quantmill.publish.targets import Target, front_matter
from quantmill.quantize import PROVENANCE_FILE, read_artifact
from quantmill.recipe.load import LoadedRecipe
from quantmill.record import PublishOutcome, PublishStatus, RunRecord
from quantmill.report.quality import quality_metric

#: the recovery the "smallest file" recommendation asks for when no gate sets one on the quality metric
DEFAULT_RECOVERY = 0.99
#: (repo url, fingerprint, run id) → the commit that published it, so a run's later GGUF variants report it
_COMMITTED: dict[tuple[str, str, str], str] = {}


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


def _recovery(value: float | None, base: float | None, quality: str | None) -> float | None:
    if value is None or not base:
        return None
    return base / value if quality == "ppl" else value / base  # lower perplexity is better


def measured_row(record: RunRecord, variant_id: str, quality: str | None, file: str, sha256: str) -> dict[str, Any]:
    """One file's row, every number as the run recorded it (``results.json``)."""
    entry = record.variants[variant_id]
    assert entry.evaluation is not None and entry.artifact is not None
    evaluation, baseline = entry.evaluation, record.baseline_evaluation()
    provenance = read_artifact(entry.artifact).provenance
    value = evaluation.value(quality) if quality else None
    return {
        "variant": variant_id,
        "type": str(provenance["parameters"]["type"]).upper(),
        "size_mb": evaluation.value("size_mb"),
        "bits_per_weight": evaluation.value("bits_per_weight"),
        "quality": value,
        "recovery": _recovery(value, baseline.value(quality) if baseline and quality else None, quality),
        "ppl": evaluation.value("ppl"),
        "kld": evaluation.value("kld"),
        "decode_tok_s": evaluation.value("decode_tok_s"),
        "verdict": entry.status.value,
        "sha256": sha256,
        "imatrix": _imatrix_of(provenance),
    }


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
    and the one closest to the baseline; with the file to show in the usage snippet (the first of them)."""
    measured = {f: r for f, r in rows.items() if r["recovery"] is not None and r["size_mb"] is not None}
    if not measured:
        return ["quality or size was not measured for these files: no recommendation"], None
    out = []
    keeping = [f for f, r in measured.items() if r["recovery"] >= required]
    smallest = min(keeping, key=lambda f: (measured[f]["size_mb"], f)) if keeping else None
    if smallest:
        out.append(
            f"**Smallest that keeps ≥ {required:.0%} of the baseline's {quality}**: `{smallest}` "
            f"({_fmt(measured[smallest]['size_mb'])} MB, recovery {_fmt(measured[smallest]['recovery'])})"
        )
    else:
        out.append(f"No file keeps ≥ {required:.0%} of the baseline's {quality}.")
    closest = max(measured, key=lambda f: (measured[f]["recovery"], -measured[f]["size_mb"], f))
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


@functools.lru_cache(maxsize=256)
def _hash_of(path: Path, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def _hashed(path: Path) -> str:
    """A file's sha256, hashed once per process while it is unchanged: every GGUF variant of a run
    publishes the whole group, and the files may be tens of GB."""
    stat = path.stat()
    return _hash_of(path, stat.st_size, stat.st_mtime_ns)


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
            if name in files and _hashed(files[name]) != _hashed(path):
                raise PublishError(f"{name} differs between GGUF variants of this run; they cannot share one repo")
            files[name] = path
            if name.endswith(".gguf") and name != "imatrix.gguf":
                owners[name] = variant_id
    return files, owners


def publish_group(
    loaded: LoadedRecipe, record: RunRecord, variant_id: str, target: Target, *, force: bool = False
) -> PublishOutcome:
    """Publish the grouped GGUF repo ``variant_id`` belongs to: every accepted GGUF type of ``record``
    bound for that repo (plus ``variant_id`` itself when ``force``d), in one commit, or nothing when
    the repo already holds exactly this.

    Raises:
        PublishError: the license is unknown, two variants' shared files differ, or the commit failed.
    """
    variant = loaded.variant(variant_id)
    repo_id = repo_id_for(loaded, variant)
    in_repo = [
        v
        for v in publishable(record.variants, [variant_id] if force else [])
        if is_grouped(loaded, loaded.variant(v)) and repo_id_for(loaded, loaded.variant(v)) == repo_id
    ]
    files, owners = _group_files(record, in_repo)
    quality = quality_metric(record)
    rows = {f: measured_row(record, v, quality, f, _hashed(files[f])) for f, v in owners.items()}
    previous = front_matter(target.read_card(repo_id) or "").get("quantmill") or {}
    present = target.files(repo_id)
    # types this run did not measure keep their file and row; measured ones are this run's
    kept = {
        f: row
        for f, row in (previous.get("files") or {}).items()
        if row.get("variant") not in record.variants and f in present and f not in rows
    }
    rows = dict(sorted((rows | kept).items()))  # one order, so a rerun renders the same card
    keep = set(kept) | ({"imatrix.gguf"} & present if any(r.get("imatrix") for r in kept.values()) else set())
    text, print_ = _card(loaded, record, repo_id, rows, quality, files, keep)
    types = ", ".join(sorted(r["type"] for r in rows.values()))
    message = f"quantmill: GGUF {types} from recipe {loaded.name} (run {record.run_id})"
    key = (target.url(repo_id), print_, record.run_id)
    commit = commit_unless_present(
        target, repo_id, files, text, print_, message, loaded.recipe.publish, keep=sorted(keep - set(files))
    )
    if commit is None and key not in _COMMITTED:
        return PublishOutcome(
            status=PublishStatus.UNCHANGED,
            variant=variant_id,
            repo_id=repo_id,
            url=target.url(repo_id),
            fingerprint=print_,
        )
    if commit is not None:
        _COMMITTED[key] = commit
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
        commit=_COMMITTED[key],
        collection=collection,
    )


def _card(
    loaded: LoadedRecipe,
    record: RunRecord,
    repo_id: str,
    rows: dict[str, dict],
    quality: str | None,
    files: dict[str, Path],
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
        repo_id=repo_id,
        tag=tag,
        recipe_name=loaded.name,
        recipe_sha256=loaded.sha256[:16],
    )
    # the card holds each GGUF file's hash, and the imatrix's calibration fingerprint (it is made from nothing else)
    print_ = hashlib.sha256("\0".join([str(card), *sorted({*files, *keep})]).encode()).hexdigest()
    card.data.quantmill = {**card.data.quantmill, "fingerprint": print_}
    return str(card), print_
