"""The method contract: what a quantization method declares about itself, without importing its backend.

A method file (``quantmill/methods/gptq.py`` …, or a plug-in's module registered in
the ``quantmill.methods`` entry-point group) defines a pydantic parameter model and
a :class:`MethodSpec`. Validation, planning, cache keys and the JSON Schema read
only the spec, so ``quantmill validate`` never imports torch or the method's
library. :func:`quantmill.registry.get_method` refuses anything that is not a spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from quantmill.methods.formats import OutputFormat

if TYPE_CHECKING:
    from quantmill.methods.base import QuantizeContext
    from quantmill.modelinfo import ModelShape

#: How a method uses a GPU: ``none`` (it never does), ``optional`` (faster with one), ``required``.
GPUUse = Literal["none", "optional", "required"]


class MethodParams(BaseModel):
    """Base of every method's parameters: strict, immutable, hashable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: fields a matrix row may give as a list, expanded into one variant per value
    axes: ClassVar[tuple[str, ...]] = ()
    #: fields left out of a dump while empty (per-layer maps): a uniform variant's parameters, and so its
    #: cache keys, provenance and card, stay what they were before the field existed
    omitted_when_empty: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in self.omitted_when_empty:
            if name in data and not data[name]:
                del data[name]
        return data


@dataclass(frozen=True)
class Finding:
    """A method rule broken by a variant: which parameter, what, and what would do."""

    field: str
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class MethodSpec:
    """A method's declaration: everything quantmill knows about a method comes from here.

    Attributes:
        name: the recipe's ``method:`` value.
        params: the pydantic model of the method's parameters (a :class:`MethodParams`).
        summary: one line for the JSON Schema and the docs.
        output_format: the :class:`~quantmill.methods.formats.OutputFormat` it writes, which loads,
            measures and describes the output.
        extra: the pip extra that installs the backend (``pip install 'quantmill[extra]'``), named
            when a backend package is missing.
        packages: the backend's distribution names; their versions are part of every cache key
            of this method and are recorded in each variant's provenance.
        variant_id: builds the stable id of one expanded variant.
        bits_per_weight: nominal bits per quantized weight (scales included) of the uniform setting, for the
            plan's size estimate; :meth:`average_bits_per_weight` weighs in per-layer precision.
        quantize: ``quantize(params, ctx) -> details``; writes the model into ``ctx.out_dir``.
        gpu: how the method uses a GPU (shown in the plan, which warns when a ``required`` one
            meets a CPU recipe); ``none``: its steps run on the CPU and take no GPU slot (:attr:`uses_gpu`).
        needs_calibration: whether a variant with these parameters needs calibration data.
        check: method rules that need the model's shape or the recipe's device (group sizes …).
        quantizes_embeddings: whether embeddings are quantized too, for size estimates.
        cost_note: what a variant costs beyond quantizing, for the plan's setting column (or None).
        card_notes: ``card_notes(params, details)``: text for the card's "How it was made"
            section, from the variant's parameters and its provenance details (or None).
        training_tokens: tokens a variant trains on (0 for methods that do not train); the
            operator caps it (``QUANTMILL_MAX_TRAINING_TOKENS``).
        runs_model_code: whether making the output runs Python shipped with the model when the
            model has any (``auto_map``), whatever ``trust_remote_code`` says (llama.cpp's converter
            loads such tokenizers with remote code); such models need the ``remote_code`` capability.
        layer_bits_per_weight: ``layer_bits_per_weight(params, shape)``: bits per weight of each matrix
            the method quantizes, by module name (a key of ``shape.weight_parameters``), for methods
            whose parameters can give layers their own precision (:meth:`average_bits_per_weight`).
        layer_precision: ``layer_precision(params, details)``: the card's per-layer precision rows
            (``precision``, ``layers``, ``count``); none for a uniform variant.
    """

    name: str
    params: type[MethodParams]
    summary: str
    output_format: OutputFormat
    extra: str
    packages: tuple[str, ...]
    variant_id: Callable[[Any], str]
    bits_per_weight: Callable[[Any], float]
    quantize: Callable[[Any, QuantizeContext], dict[str, Any]] | None
    gpu: GPUUse = "optional"
    needs_calibration: Callable[[Any], bool] = field(default=lambda params: False)
    check: Callable[[Any, ModelShape | None, str], list[Finding]] = field(default=lambda params, shape, device: [])
    quantizes_embeddings: bool = False
    cost_note: Callable[[Any], str | None] = field(default=lambda params: None)
    card_notes: Callable[[Any, dict[str, Any]], str | None] = field(default=lambda params, details: None)
    training_tokens: Callable[[Any], int] = field(default=lambda params: 0)
    runs_model_code: bool = False
    layer_bits_per_weight: Callable[[Any, ModelShape], dict[str, float]] | None = None
    layer_precision: Callable[[Any, dict[str, Any]], list[dict[str, str]]] = field(default=lambda params, details: [])

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.params, type) and issubclass(self.params, MethodParams)):
            problems.append(f"params must be a MethodParams subclass, not {self.params!r}")
        if not isinstance(self.output_format, OutputFormat):
            problems.append(f"output_format must be an OutputFormat, not {self.output_format!r}")
        if not (isinstance(self.packages, tuple) and all(isinstance(p, str) for p in self.packages)):
            problems.append(f"packages must be a tuple of distribution names, not {self.packages!r}")
        if self.gpu not in ("none", "optional", "required"):
            problems.append(f"gpu must be 'none', 'optional' or 'required', not {self.gpu!r}")
        if problems:
            raise TypeError(f"method '{self.name}': " + "; ".join(problems))

    @property
    def uses_gpu(self) -> bool:
        """Whether its steps take a GPU slot on a CUDA run; a ``gpu="none"`` method's take a CPU slot
        and run on the CPU (``quantmill.pipeline.SlotPolicy``)."""
        return self.gpu != "none"

    def average_bits_per_weight(self, params: Any, shape: ModelShape | None) -> float:
        """Bits per quantized weight over the whole model: each quantized matrix's bits weighted by its
        parameters when the method knows per-layer bits and the model's shape is known, else the nominal
        :attr:`bits_per_weight` (the same number for a uniform variant)."""
        if self.layer_bits_per_weight is None or shape is None or not shape.weight_parameters:
            return self.bits_per_weight(params)
        bits_of = self.layer_bits_per_weight(params, shape)
        if not bits_of:
            return self.bits_per_weight(params)
        total = sum(shape.weight_parameters[name] for name in bits_of)
        return sum(bits * shape.weight_parameters[name] for name, bits in bits_of.items()) / total

    def missing_packages(self) -> list[str]:
        """The backend packages that are not installed."""
        from quantmill.methods.base import package_version

        return [package for package in self.packages if package_version(package) is None]


def scale_bits(group_size: int, bits_per_group: int = 16) -> float:
    """Scale (and zero-point) bits per weight: ``bits_per_group`` per group, ~0 per channel (``-1``)."""
    return bits_per_group / group_size if group_size > 0 else 0.0


def group_size_findings(group_size: int | None, shape: ModelShape | None) -> list[Finding]:
    """Every linear layer's in-features must be a multiple of the group size."""
    if group_size is None or group_size <= 0 or shape is None:
        return []
    bad = {layer: size for layer, size in shape.linear_in_features.items() if size % group_size}
    if not bad:
        return []
    layers = ", ".join(f"{layer} ({size})" for layer, size in sorted(bad.items()))
    valid = shape.valid_group_sizes()
    return [
        Finding(
            "group_size",
            f"group size {group_size} does not divide the in-features of {layers}",
            f"valid group sizes for this model: {', '.join(map(str, valid)) or 'none'}, or -1 for per-channel",
        )
    ]


def conv1d_findings(shape: ModelShape | None, backend: str) -> list[Finding]:
    """A backend that quantizes ``nn.Linear`` layers only would leave a model whose layers are transformers'
    ``Conv1D`` (GPT-2 and kin) unquantized: refused before anything runs."""
    if shape is None or not shape.conv1d_linears:
        return []
    return [
        Finding(
            "method",
            f"{backend} quantizes nn.Linear layers only; {shape.architecture or shape.model_type}'s layers are "
            "Conv1D, so nothing would be quantized",
            "use gguf or bnb for this model",
        )
    ]
