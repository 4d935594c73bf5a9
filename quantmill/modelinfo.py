"""What can be known about a model without loading it: its shape and parameter count.

Read from ``config.json`` and the safetensors headers of a local folder, or of a
hub model already in the local Hugging Face cache. Nothing here downloads.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATE_GROUP_SIZES = (16, 32, 64, 128, 256)

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class ModelShape:
    """Linear-layer in-features by layer kind, and parameter counts.

    Attributes:
        linear_in_features: e.g. ``{"self_attn.q_proj": 256, "mlp.down_proj": 512}``.
        parameters: total parameters, when the weights' headers were readable.
        linear_parameters: parameters inside decoder-layer linear weights (what most methods quantize).
        checkpoint_bytes: bytes of the weight files.
        weight_parameters: parameters of every matrix weight by module name
            (``{"model.layers.0.mlp.down_proj": 131072, "model.embed_tokens": …}``), for per-layer precision.
    """

    linear_in_features: dict[str, int]
    parameters: int | None = None
    linear_parameters: int | None = None
    checkpoint_bytes: int | None = None
    weight_parameters: dict[str, int] = field(default_factory=dict)

    def valid_group_sizes(self) -> list[int]:
        return [g for g in CANDIDATE_GROUP_SIZES if all(n % g == 0 for n in self.linear_in_features.values())]


def find_model_dir(model_id: str, base_dir: Path | None = None, revision: str | None = None) -> Path | None:
    """A local folder holding the model's ``config.json``, or None when it is not on disk."""
    candidate = Path(model_id).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    try:
        if (candidate / "config.json").is_file():
            return candidate
    except (OSError, ValueError):  # a path too long or malformed for this filesystem
        return None
    if "/" not in model_id or model_id.startswith((".", "/", "~")):
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_id, "config.json", revision=revision)
    return Path(cached).parent if isinstance(cached, str) else None


def read_model_shape(model_dir: Path) -> ModelShape | None:
    """The shape of a Llama-like decoder from ``config.json`` (None for other layouts)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text = config.get("text_config", config)
    hidden = text.get("hidden_size")
    intermediate = text.get("intermediate_size")
    heads = text.get("num_attention_heads")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, intermediate, heads)):
        return None
    head_dim = text.get("head_dim") or hidden // heads
    in_features = {
        "self_attn.q_proj": hidden,
        "self_attn.k_proj": hidden,
        "self_attn.v_proj": hidden,
        "self_attn.o_proj": heads * head_dim,
        "mlp.gate_proj": hidden,
        "mlp.up_proj": hidden,
        "mlp.down_proj": intermediate,
    }
    total, linear, size, matrices = _count_parameters(model_dir)
    return ModelShape(in_features, total, linear, size, matrices)


def _count_parameters(model_dir: Path) -> tuple[int | None, int | None, int | None, dict[str, int]]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None, None, None, {}
    total = linear = size = 0
    matrices: dict[str, int] = {}
    for file in files:
        size += file.stat().st_size
        for name, info in _safetensors_header(file).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= dim
            total += count
            if ".layers." in name and name.endswith("proj.weight"):
                linear += count
            if len(info["shape"]) == 2 and name.endswith(".weight"):
                matrices[name.removesuffix(".weight")] = count
    return total, linear, size, matrices


def _safetensors_header(path: Path) -> dict:
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(length))


def linear_weight_bytes(model_dir: Path) -> int | None:
    """Bytes that a checkpoint spends on decoder-layer linear weights (with their scales).

    Counts every tensor of a ``*proj*`` module inside ``.layers.``, whatever the
    format stores there (packed weights, scales, zero points, absmax …). None when
    the folder has no safetensors files.
    """
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        for name, info in _safetensors_header(file).items():
            if name == "__metadata__" or ".layers." not in name or "proj" not in name:
                continue
            start, end = info["data_offsets"]
            total += end - start
    return total
