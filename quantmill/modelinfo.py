"""What can be known about a model without loading it: its shape and parameter count.

Read from ``config.json`` and the safetensors headers of a local folder, or of a
hub model already in the local Hugging Face cache. Nothing here downloads.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATE_GROUP_SIZES = (16, 32, 64, 128, 256)

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


#: model types whose linear layers are transformers' ``Conv1D``: weights stored (in, out), not (out, in)
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer"})

# A decoder block's tensors live under a numbered module (``model.layers.3.``, ``transformer.h.3.``).
_NUMBERED_BLOCK = re.compile(r"^(?P<prefix>.+?)\.(?P<index>\d+)\.(?P<kind>.+)$")
# Normalization modules inside a block hold 1-D weights; their names say so (input_layernorm, ln_1, q_norm).
_NORM = re.compile(r"(norm|^ln_?\w*)$")


def is_block_linear(module: str, weight_shape: list[int] | tuple[int, ...] | None = None) -> bool:
    """The one rule for "a decoder linear layer", what weight-quantizing methods quantize: a module inside a
    numbered block (``model.layers.0.mlp.down_proj``, ``transformer.h.0.attn.c_attn``,
    ``gpt_neox.layers.0.mlp.dense_h_to_4h``, ``model.decoder.layers.0.fc1``) that is not a normalization,
    with a 2-D weight when its ``weight_shape`` is known. Embeddings and the output head are outside blocks."""
    block = _NUMBERED_BLOCK.match(module)
    if block is None or _NORM.search(module.rsplit(".", 1)[-1]):
        return False
    return weight_shape is None or len(weight_shape) == 2


def layer_kind(module: str) -> str:
    """A block module's name without its block: ``model.layers.3.mlp.down_proj`` → ``mlp.down_proj``."""
    block = _NUMBERED_BLOCK.match(module)
    return block.group("kind") if block else module


@dataclass(frozen=True)
class ModelShape:
    """Linear-layer in-features by layer kind, parameter counts, and what kind of model it is.

    Attributes:
        linear_in_features: e.g. ``{"self_attn.q_proj": 256, "mlp.down_proj": 512}`` (``attn.c_attn`` for GPT-2).
        parameters: total parameters, when the weights' headers were readable.
        linear_parameters: parameters inside decoder-layer linear weights (what most methods quantize).
        checkpoint_bytes: bytes of the weight files.
        weight_parameters: parameters of every matrix weight by module name
            (``{"model.layers.0.mlp.down_proj": 131072, "model.embed_tokens": …}``), for per-layer precision.
        model_type: ``config.json``'s ``model_type`` (``llama``, ``gpt2`` …; None when absent).
        architecture: its first ``architectures`` entry (``LlamaForCausalLM`` …; None when absent).
    """

    linear_in_features: dict[str, int]
    parameters: int | None = None
    linear_parameters: int | None = None
    checkpoint_bytes: int | None = None
    weight_parameters: dict[str, int] = field(default_factory=dict)
    model_type: str | None = None
    architecture: str | None = None

    @property
    def conv1d_linears(self) -> bool:
        """Whether its linear layers are transformers' ``Conv1D`` (GPT-2 and kin), not ``nn.Linear``."""
        return self.model_type in CONV1D_MODEL_TYPES

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
    """The shape of a decoder from its safetensors headers (any architecture), or, without weight files,
    from a Llama-like ``config.json``; None when neither tells.

    Raises:
        ValueError: a weight file is not a readable safetensors file (:func:`_safetensors_header`).
    """
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    text = config.get("text_config", config)
    text = text if isinstance(text, dict) else config
    model_type = next((t for t in (text.get("model_type"), config.get("model_type")) if isinstance(t, str)), None)
    architectures = config.get("architectures")
    first = architectures[0] if isinstance(architectures, list) and architectures else None
    kind = {"model_type": model_type, "architecture": first if isinstance(first, str) else None}
    total, linear, size, matrices, in_features = _count_parameters(model_dir, model_type in CONV1D_MODEL_TYPES)
    if in_features:
        return ModelShape(in_features, total, linear, size, matrices, **kind)
    llama_like = _llama_like_in_features(text)
    if llama_like is None:
        return None
    return ModelShape(llama_like, total, linear, size, matrices, **kind)


def _llama_like_in_features(text: Any) -> dict[str, int] | None:
    hidden = text.get("hidden_size")
    intermediate = text.get("intermediate_size")
    heads = text.get("num_attention_heads")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, intermediate, heads)):
        return None
    head_dim = text.get("head_dim")
    head_dim = head_dim if isinstance(head_dim, int) and head_dim > 0 else hidden // heads
    return {
        "self_attn.q_proj": hidden,
        "self_attn.k_proj": hidden,
        "self_attn.v_proj": hidden,
        "self_attn.o_proj": heads * head_dim,
        "mlp.gate_proj": hidden,
        "mlp.up_proj": hidden,
        "mlp.down_proj": intermediate,
    }


def _count_parameters(
    model_dir: Path, conv1d: bool
) -> tuple[int | None, int | None, int | None, dict[str, int], dict[str, int]]:
    files = weight_files(model_dir)
    if not files:
        return None, None, None, {}, {}
    total = linear = size = 0
    matrices: dict[str, int] = {}
    in_features: dict[str, int] = {}
    for file in files:
        size += file.stat().st_size
        for name, info in _safetensors_header(file).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= dim
            total += count
            if not name.endswith(".weight"):
                continue
            module = name.removesuffix(".weight")
            if len(info["shape"]) == 2:
                matrices[module] = count
            if is_block_linear(module, info["shape"]):
                linear += count
                in_features[layer_kind(module)] = info["shape"][0 if conv1d else 1]
    return total, linear, size, matrices, in_features


#: a tokenizer folder holds at least one of these (fast, sentencepiece, or a BPE vocabulary)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files transformers loads from ``model_dir``: those its index names, else
    ``model.safetensors``, else every ``*.safetensors`` (a folder may also hold other checkpoints, such
    as Mistral's ``consolidated.safetensors``, which would count every weight twice)."""
    index = model_dir / "model.safetensors.index.json"
    try:
        weight_map = json.loads(index.read_text()).get("weight_map") if index.is_file() else None
    except (OSError, ValueError, AttributeError):
        weight_map = None
    if isinstance(weight_map, dict):
        named = sorted({model_dir / str(name) for name in weight_map.values()})
        return [file for file in named if file.is_file()]
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    return sorted(model_dir.glob("*.safetensors"))


#: safetensors' own limit on a header (the Rust loader refuses larger ones)
MAX_HEADER_BYTES = 100_000_000


def _safetensors_header(path: Path) -> dict:
    """The tensor table of a safetensors file, checked as far as quantmill reads it.

    Raises:
        ValueError: naming the file and what is wrong (not a regular file, a header that does not fit the
            file or safetensors' limit, not a table of tensors with integer shapes and offsets).
    """

    def bad(why: str) -> ValueError:
        return ValueError(f"{path.name} is not a readable safetensors file: {why}")

    try:
        if not path.is_file():
            raise bad("not a regular file")
        size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise bad(f"{size} bytes, shorter than a header")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise bad(f"its header claims {length} bytes")
            header = json.loads(fh.read(length))
    except OSError as exc:
        raise bad(exc.strerror or str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise bad(f"its header is not JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a table of tensors")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape, offsets = (info.get("shape"), info.get("data_offsets")) if isinstance(info, dict) else (None, None)
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and o >= 0 for o in offsets)
            and isinstance(info.get("dtype"), str)
        ):
            raise bad(f"tensor {name[:80]!r} has no valid shape, dtype and offsets")
    return header


def linear_weight_bytes(model_dir: Path) -> int | None:
    """Bytes that a checkpoint spends on decoder-layer linear weights (with their scales).

    Counts every tensor of a block linear module (:func:`is_block_linear`), whatever the format stores
    there (packed weights, scales, zero points, absmax …). None when the folder has no safetensors files.
    """
    files = weight_files(model_dir)
    if not files:
        return None
    total = 0
    for file in files:
        for name, info in _safetensors_header(file).items():
            module = _module_of(name)
            if name == "__metadata__" or module is None or not is_block_linear(module):
                continue
            start, end = info["data_offsets"]
            total += end - start
    return total


def _module_of(tensor: str) -> str | None:
    """The module a weight tensor or its quantization data belongs to (``….q_proj.weight_scale``,
    ``….q_proj.weight.absmax``, ``….q_proj.SCB`` → ``….q_proj``); None for biases."""
    parts = tensor.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if part.startswith("weight"):
            return ".".join(parts[:i])
    return None if parts[-1].endswith("bias") else ".".join(parts[:-1])


_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


def unquantized_linear_layers(model_dir: Path) -> tuple[list[str], int] | None:
    """The block linear layers (:func:`is_block_linear`) of a safetensors checkpoint that are stored as plain
    float weights with nothing beside them (no scales, no packed data), and how many block linear layers it
    has; None when the folder has no safetensors files. A quantizer that leaves all of them so did nothing."""
    files = weight_files(model_dir)
    if not files:
        return None
    tensors: dict[str, list[tuple[str, str]]] = {}  # module → (tensor name, dtype)
    for file in files:
        try:
            header = _safetensors_header(file)
        except (OSError, ValueError, struct.error):
            return None  # not a readable safetensors file: the format's own loader will say so
        for name, info in header.items():
            module = _module_of(name)
            if name != "__metadata__" and module is not None and is_block_linear(module):
                tensors.setdefault(module, []).append((name.removeprefix(module + "."), info["dtype"]))
    plain = [
        module
        for module, parts in tensors.items()
        if all(part == "weight" and dtype in _FLOAT_DTYPES for part, dtype in parts)
    ]
    return sorted(plain), len(tensors)
