"""GGUF files above the operator's size threshold are published as llama.cpp shards.

``llama-gguf-split --split --split-max-size <N>M`` writes ``<name>-00001-of-0000K.gguf`` …,
the layout llama.cpp loads from the first shard (it finds the others beside it) and
that ``-hf repo:TYPE`` tags resolve to the first shard. The evaluated artifact stays
the single file: shards exist only in a publish's staging folder, made when a commit
needs them; the plan (how many shards, hence their names) comes from a dry run, which
reads only the file's header, so a publish that changes nothing splits nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

from quantmill.errors import PublishError
from quantmill.llamacpp import LlamaCppError, find_llama_cpp, run_tool
from quantmill.trust.operator import get_operator

TOOL = "llama-gguf-split"
_N_SPLIT = re.compile(r"^n_split:\s*(\d+)\s*$", re.MULTILINE)
_CHUNK = 64 << 20  # bytes of tensor data compared at once


def shard_name(name: str, index: int, count: int) -> str:
    """llama.cpp's name of shard ``index`` (from 1) of ``count`` (``llama_split_path``)."""
    return f"{name.removesuffix('.gguf')}-{index:05d}-of-{count:05d}.gguf"


def _split_command(source: Path, prefix: Path, max_mb: int, *, dry_run: bool) -> list[str]:
    found = find_llama_cpp()
    tool = found.tool(TOOL) if found else None
    if tool is None:
        raise PublishError(
            f"{source.name} is above {max_mb} MB and must be split: {TOOL} is missing (run `quantmill setup llama-cpp`)"
        )
    return [
        str(tool),
        "--split",
        "--split-max-size",
        f"{max_mb}M",
        *(["--dry-run"] if dry_run else []),
        str(source),
        str(prefix),
    ]


def _run(command: list[str], what: str) -> str:
    try:
        return run_tool(command, what=what)
    except LlamaCppError as exc:
        raise PublishError(f"{what}: {exc}") from exc


def repo_names(name: str, path: Path) -> list[str]:
    """The names ``path`` is published under: ``[name]``, or its shards' when it is above the threshold."""
    max_mb = get_operator().gguf_split_max_mb
    if path.stat().st_size <= max_mb * 1_000_000:
        return [name]
    output = _run(_split_command(path, Path(name), max_mb, dry_run=True), f"planning the split of {name}")
    planned = _N_SPLIT.search(output)
    if planned is None:
        raise PublishError(f"{TOOL} --dry-run did not say how many shards {name} makes:\n{output[-500:]}")
    count = int(planned.group(1))
    return [name] if count == 1 else [shard_name(name, i, count) for i in range(1, count + 1)]


def split(name: str, path: Path, names: list[str], staging: Path) -> dict[str, Path]:
    """Split ``path`` into ``staging`` as planned by :func:`repo_names` (``names``); shard name → file.

    Raises:
        PublishError: the tool failed, or its shards are not the planned ones or not a faithful split.
    """
    max_mb = get_operator().gguf_split_max_mb
    _run(_split_command(path, staging / name.removesuffix(".gguf"), max_mb, dry_run=False), f"splitting {name}")
    made = sorted(p.name for p in staging.glob(f"{name.removesuffix('.gguf')}-*-of-*.gguf"))
    if made != names:
        raise PublishError(f"splitting {name} made {made}, not the planned {names}")
    shards = {n: staging / n for n in names}
    check_faithful(path, list(shards.values()))
    return shards


def check_faithful(original: Path, shards: list[Path]) -> None:
    """Refuse shards that are not exactly ``original``: the first carries its metadata, every shard
    says its place (``split.no``/``split.count``/``split.tensors.count``), and the shards' tensors
    are the original's, in order, with the same type, shape and every data byte.

    Why this check: it reads both with an independent reader (the ``gguf`` package, not the tool
    being checked) and writes nothing, so it costs about two reads of the file, small beside the
    quantization that made it. Merging the shards back and hashing would write another full copy
    and trust the same tool twice; comparing counts and sizes alone would miss a corrupted byte.

    Raises:
        PublishError: naming the first difference found.
    """
    import numpy as np
    from gguf import GGUFReader

    source = GGUFReader(original)
    parts = [GGUFReader(s) for s in shards]

    def refuse(why: str) -> PublishError:
        return PublishError(f"the shards of {original.name} are not a faithful split ({why}); nothing was published")

    def metadata(reader: GGUFReader) -> dict:
        return {k: f.contents() for k, f in reader.fields.items() if not k.startswith(("split.", "GGUF."))}

    for index, part in enumerate(parts):
        place = tuple(
            part.fields[k].contents() if k in part.fields else None
            for k in ("split.no", "split.count", "split.tensors.count")
        )
        if place != (index, len(parts), len(source.tensors)):
            raise refuse(f"{shards[index].name} says split.no/count/tensors.count {place}")
    if metadata(parts[0]) != metadata(source):
        raise refuse(f"{shards[0].name} does not carry the original's metadata")
    tensors = [t for part in parts for t in part.tensors]
    describe = [(t.name, t.tensor_type, t.shape.tolist(), t.n_bytes) for t in tensors]
    if describe != [(t.name, t.tensor_type, t.shape.tolist(), t.n_bytes) for t in source.tensors]:
        raise refuse("the tensors differ in name, order, type, shape or size")
    for theirs, ours in zip(tensors, source.tensors, strict=True):
        a, b = theirs.data.reshape(-1).view(np.uint8), ours.data.reshape(-1).view(np.uint8)
        if any(not np.array_equal(a[i : i + _CHUNK], b[i : i + _CHUNK]) for i in range(0, len(b), _CHUNK)):
            raise refuse(f"tensor {ours.name}'s data differs")
