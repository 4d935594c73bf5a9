"""How much each layer hurts the model when it alone is quantized: the input of mixed-precision allocation.

For every quantizable matrix (a decoder linear layer for GPTQ/RTN; every llama.cpp tensor, embeddings
included, for GGUF) and every precision level of the search, the scan replaces that one weight by its
round-to-nearest fake quantization, runs the model on a slice of the calibration text, and records the
mean KL divergence of the next-token distribution from the unquantized model's. The other layers stay
in full precision, so each number is that layer's own damage at that level.

Why RTN is the probe: it is the error GPTQ starts from and corrects only partly, and llama.cpp's
block quantizers (without an importance matrix) are RTN with refined scales; what differs between
layers, and what allocation needs, is how much a given weight error in that layer moves the logits,
which the probe measures end to end. It costs one forward pass per layer and level, on the CPU too.

A scan is kept on disk (``sensitivity/`` in quantmill's cache folder) under a key of the model
revision, the layers, the levels, the calibration fingerprint and the versions of quantmill, torch and
transformers, so it runs once per model. With a shared run store (``quantmill.sharedstore``) it is also
kept there (``.sensitivity/<key>.json``), so it runs once per model for every worker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

#: the scan reads at most this many calibration tokens, in windows of WINDOW tokens
SLICE_TOKENS = 1024
WINDOW = 128
_PROBE = "rtn-kld-1"  # changes when the probe's definition does: part of the cache key


@dataclass(frozen=True)
class Level:
    """A precision a layer may get.

    Attributes:
        value: its value in the method's per-layer map (bits for GPTQ/RTN, a tensor type for GGUF).
        bits_per_weight: nominal bits per weight, scales included.
        probe_bits: bits of the RTN probe (0: not quantized, as F16).
        group_size: weights per scale of the probe (-1: per output channel).
        symmetric: whether the probe's grid is symmetric around 0 (else min-max with a zero point).
    """

    value: int | str
    bits_per_weight: float
    probe_bits: int
    group_size: int
    symmetric: bool = True


@dataclass(frozen=True)
class Unit:
    """A matrix the scan probes: its transformers module, its name in the method's map, its parameters."""

    module: str
    key: str
    parameters: int


@dataclass(frozen=True)
class Sensitivity:
    """Mean KL divergence (nats per token) caused by each unit alone at each level: ``kld[key][str(value)]``."""

    units: tuple[Unit, ...]
    levels: tuple[Level, ...]
    kld: dict[str, dict[str, float]]
    tokens: int

    def of(self, unit: Unit, level: Level) -> float:
        return self.kld[unit.key][str(level.value)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": [asdict(u) for u in self.units],
            "levels": [asdict(level) for level in self.levels],
            "kld": self.kld,
            "tokens": self.tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sensitivity:
        return cls(
            tuple(Unit(**u) for u in data["units"]),
            tuple(Level(**level) for level in data["levels"]),
            data["kld"],
            data["tokens"],
        )


def fake_quantize(weight, level: Level):
    """``weight`` rounded to ``level``'s grid and back (rows split in groups; a row the group size does not
    divide gets one scale per row, as llama.cpp falls back to a type whose block fits)."""
    import torch

    if level.probe_bits <= 0:
        return weight
    rows, columns = weight.shape
    group = level.group_size if level.group_size > 0 and columns % level.group_size == 0 else columns
    x = weight.detach().float().reshape(rows, columns // group, group)
    if level.symmetric:
        top = 2 ** (level.probe_bits - 1) - 1
        scale = (x.abs().amax(-1, keepdim=True) / top).clamp(min=1e-12)
        q = torch.clamp(torch.round(x / scale), -top - 1, top) * scale
    else:
        top = 2**level.probe_bits - 1
        low, high = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        scale = ((high - low) / top).clamp(min=1e-12)
        zero = torch.round(-low / scale)
        q = (torch.clamp(torch.round(x / scale) + zero, 0, top) - zero) * scale
    return q.reshape(rows, columns).to(weight.dtype)


def windows(input_ids: Sequence[Sequence[int]], tokens: int = SLICE_TOKENS, width: int = WINDOW) -> list[list[int]]:
    """The calibration samples joined and cut into full windows of ``width`` tokens, at most ``tokens`` in all
    (one unpadded batch). A set shorter than one window gives one window of all its tokens."""
    stream = [token for ids in input_ids for token in ids][:tokens]
    if len(stream) < width:
        return [stream] if stream else []
    return [stream[i : i + width] for i in range(0, len(stream) - width + 1, width)]


def scan_key(revision: str, units: Sequence[Unit], levels: Sequence[Level], fingerprint: str, dtype: str) -> str:
    from quantmill.cachekeys import versions

    parts = {
        "probe": _PROBE,
        "revision": revision,
        "units": [asdict(u) for u in units],
        "levels": [asdict(level) for level in levels],
        "calibration": fingerprint,
        "slice": [SLICE_TOKENS, WINDOW],
        "dtype": dtype,
        "versions": versions(()),  # quantmill's, torch's and transformers', as every step's key
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_sensitivity(
    model_dir: Path,
    revision: str,
    units: Sequence[Unit],
    levels: Sequence[Level],
    input_ids: Sequence[Sequence[int]],
    fingerprint: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    cache_dir: Path | None = None,
    trust_remote_code: bool = False,
) -> Sensitivity:
    """:func:`scan` of ``units`` × ``levels``, kept in ``cache_dir`` (default: ``sensitivity/`` in
    ``QUANTMILL_CACHE_DIR``) under :func:`scan_key`, and in the shared run store if one is configured;
    a hit in either loads no model."""
    from quantmill.errors import RunStoreError
    from quantmill.runstore import atomic_write_bytes
    from quantmill.sharedstore import configured

    if cache_dir is None:
        from quantmill.settings import get_settings

        cache_dir = get_settings().cache_dir / "sensitivity"
    entry = cache_dir / f"{scan_key(revision, units, levels, fingerprint, dtype)}.json"
    shared = configured()
    kept = _read(entry, units, levels)
    if kept is not None:
        if shared is not None:  # made here, perhaps before the store was shared
            _shared(lambda: shared.push_file(entry, _stored_as(entry), unless_present=True))
        return kept
    if shared is not None and _shared(lambda: shared.fetch_file(_stored_as(entry), entry)):
        kept = _read(entry, units, levels)
        if kept is not None:
            return kept
    result = scan(model_dir, units, levels, input_ids, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    try:
        atomic_write_bytes(entry, json.dumps(result.to_dict()).encode())
    except RunStoreError as exc:  # the cache only saves time
        log.warning("sensitivity scan not cached: %s", exc)
        return result
    if shared is not None:
        _shared(lambda: shared.push_file(entry, _stored_as(entry)))
    return result


def _read(entry: Path, units: Sequence[Unit], levels: Sequence[Level]) -> Sensitivity | None:
    """The scan kept at ``entry`` when it is one of exactly these units and levels, with a finite number for
    each pair (an entry fetched from a shared store is anyone's writing); None: scan."""
    try:
        kept = Sensitivity.from_dict(json.loads(entry.read_text()))
        complete = all(math.isfinite(float(kept.of(unit, level))) for unit in kept.units for level in kept.levels)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # not scanned yet, or a damaged entry: scan
    return kept if complete and (kept.units, kept.levels) == (tuple(units), tuple(levels)) else None


def _stored_as(entry: Path) -> str:
    """Where a scan is in the shared run store: outside every recipe, since any recipe of the model may use it."""
    return f"{SHARED_FOLDER}/{entry.name}"


#: the shared run store's folder of scans
SHARED_FOLDER = ".sensitivity"


def _shared(call: Callable[[], T]) -> T | None:
    """``call`` to the shared store, whose failure costs a scan (or its sharing), not the run: a warning."""
    from quantmill.errors import RunStoreError

    try:
        return call()
    except RunStoreError as exc:
        log.warning("sensitivity scan not shared: %s", exc)
        return None


def scan(
    model_dir: Path,
    units: Sequence[Unit],
    levels: Sequence[Level],
    input_ids: Sequence[Sequence[int]],
    *,
    device: str = "cpu",
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> Sensitivity:
    """Measure every unit at every level, one at a time (see the module's docstring)."""
    import torch
    from transformers import AutoModelForCausalLM

    batch = windows(input_ids)
    if not batch:
        raise ValueError("the sensitivity scan needs calibration text; the calibration set is empty")
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype, torch.float32), trust_remote_code=trust_remote_code
    ).to(device)
    model.eval()
    ids = torch.tensor(batch, device=device)

    def log_probs():
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)

    reference = log_probs()
    modules = dict(model.named_modules())
    kld: dict[str, dict[str, float]] = {}
    for unit in units:
        weight = modules[unit.module].weight
        original = weight.data.clone()
        kld[unit.key] = {}
        for level in levels:
            if level.probe_bits <= 0:
                kld[unit.key][str(level.value)] = 0.0
                continue
            weight.data = fake_quantize(original, level)
            probe = log_probs()
            divergence = (reference.exp() * (reference - probe)).sum(-1).mean()
            kld[unit.key][str(level.value)] = max(float(divergence), 0.0)
            weight.data = original
        log.info("sensitivity of %s: %s", unit.key, kld[unit.key])
    return Sensitivity(tuple(units), tuple(levels), kld, int(ids.numel()))
