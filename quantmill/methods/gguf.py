"""GGUF files for llama.cpp: convert with llama.cpp's own script, quantize with its tools."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from quantmill.methods.base import QuantizeContext
from quantmill.methods.formats import OutputFormat
from quantmill.methods.layers import (
    first_match,
    grouped_rows,
    invalid_pattern_findings,
    mix_suffix,
    pattern_matches,
    precision_map,
    unknown_name_findings,
)
from quantmill.methods.spec import Finding, MethodParams, MethodSpec

if TYPE_CHECKING:
    from quantmill.evaluation.backends import EvalModel
    from quantmill.evaluation.evaluate import EvaluationSetup
    from quantmill.evaluation.results import EvaluationResult
    from quantmill.modelinfo import ModelShape

# Nominal bits per weight of each llama.cpp type (llama.cpp's quantize table).
GGUF_TYPES: dict[str, float] = {
    "q2_k": 2.96,
    "q3_k_s": 3.50,
    "q3_k_m": 3.91,
    "q3_k_l": 4.27,
    "q4_0": 4.50,
    "q4_1": 5.00,
    "q4_k_s": 4.58,
    "q4_k_m": 4.89,
    "q5_0": 5.50,
    "q5_1": 6.00,
    "q5_k_s": 5.54,
    "q5_k_m": 5.69,
    "q6_k": 6.56,
    "q8_0": 8.50,
    "iq1_s": 1.56,
    "iq1_m": 1.75,
    "iq2_xxs": 2.06,
    "iq2_xs": 2.31,
    "iq2_s": 2.50,
    "iq2_m": 2.70,
    "iq3_xxs": 3.06,
    "iq3_xs": 3.30,
    "iq3_s": 3.44,
    "iq3_m": 3.66,
    "iq4_nl": 4.50,
    "iq4_xs": 4.25,
    "f16": 16.0,
    "bf16": 16.0,
    "f32": 32.0,
}
GGUFType = Literal[tuple(GGUF_TYPES)]  # type: ignore[valid-type]

# Bits per weight of the tensor types ``tensor_types`` may give single tensors (ggml's block sizes;
# the IQ types below IQ4 are left out: they need an importance matrix per tensor).
TENSOR_TYPES: dict[str, float] = {
    "q2_k": 2.625,
    "q3_k": 3.4375,
    "q4_k": 4.5,
    "q5_k": 5.5,
    "q6_k": 6.5625,
    "q4_0": 4.5,
    "q4_1": 5.0,
    "q5_0": 5.5,
    "q5_1": 6.0,
    "q8_0": 8.5,
    "iq4_nl": 4.5,
    "iq4_xs": 4.25,
    "f16": 16.0,
    "bf16": 16.0,
    "f32": 32.0,
}
TensorTypes = precision_map(tuple(TENSOR_TYPES), ordered=True, what="tensor")

# transformers module names of a Llama-like decoder → llama.cpp tensor names (its converter's mapping)
_BLOCK_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_BLOCK = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def tensor_name(module: str) -> str | None:
    """The llama.cpp name of a Llama-like matrix: ``model.layers.0.mlp.down_proj`` → ``blk.0.ffn_down.weight``."""
    if module == "model.embed_tokens":
        return "token_embd.weight"
    if module == "lm_head":
        return "output.weight"
    block = _BLOCK.match(module)
    if block and block.group(2) in _BLOCK_TENSORS:
        return f"blk.{block.group(1)}.{_BLOCK_TENSORS[block.group(2)]}.weight"
    return None


def model_tensors(shape: ModelShape) -> dict[str, str]:
    """The model's matrices that have llama.cpp names: module name → tensor name."""
    named = {module: tensor_name(module) for module in shape.weight_parameters}
    return {module: name for module, name in named.items() if name is not None}


def needs_imatrix(gguf_type: str) -> bool:
    """llama.cpp refuses the IQ types (except IQ4) without an importance matrix."""
    return gguf_type.startswith("iq") and gguf_type not in ("iq4_nl", "iq4_xs")


class GGUFParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("type",)
    omitted_when_empty: ClassVar[tuple[str, ...]] = ("tensor_types",)

    type: GGUFType = Field(  # type: ignore[valid-type]
        "q4_k_m",
        description="llama.cpp type, case-insensitive; Q4_K_M is the balanced default",
        json_schema_extra={"_ci": True},
    )
    imatrix: bool | None = Field(None, description="use an importance matrix (default: on for IQ types)")
    tensor_types: TensorTypes = Field(  # type: ignore[valid-type]
        (),
        json_schema_extra={"default": {}},  # stored as pairs, written as a mapping
        description="per-tensor types: llama.cpp tensor name or pattern (blk.0.ffn_down.weight, attn_v) → type, "
        "as llama-quantize --tensor-type (the first pattern that matches a tensor wins); the rest follow 'type'",
    )

    @field_validator("type", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _imatrix_for_iq(self) -> GGUFParams:
        if self.imatrix is False and needs_imatrix(self.type):
            raise ValueError(f"GGUF type {str(self.type).upper()} needs an importance matrix; remove 'imatrix: false'")
        return self

    @model_validator(mode="after")
    def _tensor_types_need_quantized_type(self) -> GGUFParams:
        if self.tensor_types and self.type in ("f16", "bf16", "f32"):
            raise ValueError(f"tensor_types need a quantized type; {str(self.type).upper()} is a plain conversion")
        return self

    @property
    def use_imatrix(self) -> bool:
        return needs_imatrix(self.type) if self.imatrix is None else self.imatrix


def quantize(params: GGUFParams, ctx: QuantizeContext) -> dict:
    """Convert (once per recipe) and quantize to one llama.cpp type; report fallbacks and bits per weight."""
    from quantmill.methods import _gguf

    return _gguf.quantize(params, ctx)


def _fallback_summary(fallbacks: list[dict[str, Any]]) -> str:
    """``12 tensors q4_K → q5_0``: llama.cpp's type substitutions for rows its type cannot hold."""
    counts = Counter(f"{f['wanted']} → {f['used']}" for f in fallbacks)
    return ", ".join(f"{n} tensors {change}" for change, n in sorted(counts.items())) or "none"


class GGUFFormat(OutputFormat):
    """One GGUF file (beside it, the importance matrix if one was used), run by llama.cpp."""

    name = "gguf"
    library_name = "gguf"
    tags = ("gguf",)
    has_tokenizer = False  # the tokenizer is inside the GGUF file

    def weights(self, folder: Path) -> Path:
        files = sorted(p for p in folder.glob("*.gguf") if p.name != "imatrix.gguf")
        if len(files) != 1:
            raise FileNotFoundError(f"expected one model .gguf file in {folder}, found {[p.name for p in files]}")
        return files[0]

    def load_for_evaluation(
        self, folder: Path, device: str, batch_size: int | str, *, trust_remote_code: bool = False
    ) -> EvalModel:
        # llama.cpp runs no Python: trust_remote_code has nothing to allow here
        from quantmill.methods._gguf_eval import gguf_eval_model

        return gguf_eval_model(self.weights(folder), device)

    def add_metrics(self, folder: Path, setup: EvaluationSetup, result: EvaluationResult) -> None:
        from quantmill.methods._gguf_eval import add_kl_divergence

        add_kl_divergence(folder, self.weights(folder), setup, result)

    def artifact_tokenizer(self, folder: Path, *, trust_remote_code: bool = False) -> Callable[[str], list[int]] | None:
        from quantmill.methods._gguf_eval import gguf_tokenizer

        return gguf_tokenizer(self.weights(folder))

    def usage(self, repo_id: str, provenance: dict[str, Any]) -> str:
        file = provenance["details"]["file"]
        return (
            f'```bash\nllama-cli -hf {repo_id} -p "Hello"   # or: llama-cli -m {file}\n'
            f"ollama run hf.co/{repo_id}\n```\n\n```python\nfrom llama_cpp import Llama\n"
            f'llm = Llama.from_pretrained("{repo_id}", filename="{file}")\n```'
        )

    def card_files(self, provenance: dict[str, Any]) -> list[dict[str, str]]:
        details = provenance["details"]
        imatrix = details.get("imatrix")
        return [
            {
                "file": details["file"],
                "type": str(provenance["parameters"]["type"]).upper(),
                "size (MB)": f"{details['bytes'] / 1e6:.4g}",
                "bits per weight": str(details["bits_per_weight"]),
                "fallbacks": _fallback_summary(details.get("fallbacks") or []),
                "imatrix": f"{imatrix['samples']} samples of `{Path(imatrix['dataset']).name}`" if imatrix else "none",
            }
        ]

    def greedy_generate(
        self,
        repo_id: str,
        provenance: dict[str, Any],
        prompts: Sequence[str],
        max_new_tokens: int,
        device: str,
        *,
        trust_remote_code: bool = False,
    ) -> list[list[int]]:
        """llama.cpp (``llama_cpp.Llama``) loads the GGUF as the card's Python snippet says, and generates."""
        from quantmill.methods._gguf_serve import gguf_greedy_generate

        return gguf_greedy_generate(self.usage(repo_id, provenance), prompts, max_new_tokens)


def _findings(params: GGUFParams, shape: ModelShape | None, device: str) -> list[Finding]:
    return _architecture_findings(shape) + _tensor_findings(params, shape)


def _architecture_findings(shape: ModelShape | None) -> list[Finding]:
    """llama.cpp's converter must know the model's architecture (checked when llama.cpp is set up here)."""
    from quantmill.methods._gguf import unsupported_architecture

    reason = unsupported_architecture(shape.architecture if shape else None)
    if reason is None:
        return []
    return [Finding("method", f"gguf cannot convert this model: {reason}", "use a transformers-format method")]


def _tensor_findings(params: GGUFParams, shape: ModelShape | None) -> list[Finding]:
    """``tensor_types`` patterns must compile and match a tensor of the model (when its shape is known)."""
    invalid = invalid_pattern_findings("tensor_types", params.tensor_types)
    if invalid or shape is None or not params.tensor_types:
        return invalid
    names = model_tensors(shape).values()
    if not names:
        return []  # not a Llama-like layout: llama.cpp's names are not known here
    return unknown_name_findings(
        "tensor_types", params.tensor_types, names, lambda pattern, name: pattern_matches(pattern, name), "tensor"
    )


def _tensor_bits(params: GGUFParams, shape: ModelShape) -> dict[str, float]:
    """Each matrix's bits per weight: its ``tensor_types`` type's, else the nominal bits of ``type``."""
    return {
        module: TENSOR_TYPES.get(first_match(name, params.tensor_types), GGUF_TYPES[params.type])
        for module, name in model_tensors(shape).items()
    }


def _tensor_rows(params: GGUFParams, details: dict[str, Any]) -> list[dict[str, str]]:
    """The card's rows for a variant with ``tensor_types``: the types llama.cpp wrote, per tensor."""
    if not params.tensor_types:
        return []
    return grouped_rows({name: kind.upper() for name, kind in (details.get("tensors") or {}).items()}, None)


SPEC = MethodSpec(
    name="gguf",
    params=GGUFParams,
    summary="llama.cpp GGUF files, Q2_K…Q8_0, IQ types with an importance matrix",
    output_format=GGUFFormat(),
    extra="gguf",
    packages=("llama-cpp-python", "gguf"),
    quantize=quantize,
    gpu="none",  # llama.cpp's quantization runs on the CPU
    needs_calibration=lambda p: p.use_imatrix,
    variant_id=lambda p: f"gguf-{p.type}{mix_suffix(p.tensor_types)}",
    bits_per_weight=lambda p: GGUF_TYPES[p.type],
    quantizes_embeddings=True,
    # convert_hf_to_gguf.py loads some tokenizers with AutoTokenizer(..., trust_remote_code=True)
    runs_model_code=True,
    check=_findings,
    layer_bits_per_weight=_tensor_bits,
    layer_precision=_tensor_rows,
)
