"""What a method's ``quantize`` function receives, and the helpers most methods share.

A method's ``quantize(params, ctx)`` writes a self-contained model folder into
``ctx.out_dir`` and returns a small dict of details for the provenance file. It
never prints, publishes or touches Prefect; the driver (``quantmill.quantize``)
checks that the spec's backend packages are installed, times it, measures
memory, writes ``quantmill.json`` and makes the folder visible atomically.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantmill.errors import QuantizationError

if TYPE_CHECKING:  # the servable probe imports the methods and needs no recipe or calibration code
    from quantmill.calibration import CalibrationSet

log = logging.getLogger(__name__)

#: the libraries every method runs on; a method's own backend packages are in its spec
COMMON_PACKAGES = ("torch", "transformers")

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class QuantizeContext:
    """Everything a method needs besides its own parameters.

    Attributes:
        source_dir: the baseline model folder (already downloaded and pinned).
        out_dir: an empty folder to write the quantized model into.
        calibration: tokenized calibration samples, when the recipe has them.
        dtype: the recipe's load dtype (``auto`` keeps the checkpoint's).
        device: ``cpu`` or ``cuda[:N]``: the step's (first) GPU; :meth:`placement` places a model
            on all the GPUs the step holds.
        tokenizer_dir: where the tokenizer lives (the model folder unless the recipe names one).
        shared_dir: a folder shared by the recipe's variants, for intermediates worth
            making once (GGUF's f16 conversion and importance matrix), keyed by
            ``source_revision`` and the calibration fingerprint.
        source_revision: the pinned revision of the baseline.
        recipe_dir: the recipe's folder, which relative data paths in method parameters start from.
        trust_remote_code: passed to every transformers ``from_pretrained``: run the model's
            own code (the recipe asked and the operator allowed it).
    """

    source_dir: Path
    out_dir: Path
    calibration: CalibrationSet | None
    dtype: str
    device: str
    tokenizer_dir: Path
    shared_dir: Path
    source_revision: str
    recipe_dir: Path | None = None
    trust_remote_code: bool = False

    def torch_dtype(self):
        import torch

        return getattr(torch, _DTYPES[self.dtype]) if self.dtype in _DTYPES else "auto"

    def load_model(self, path: Path | None = None, **kwargs: Any):
        """A fresh copy of the baseline (or of ``path``) from disk, cheaper than deep-copying a loaded one."""
        from transformers import AutoModelForCausalLM

        kwargs.setdefault("dtype", self.torch_dtype())
        return AutoModelForCausalLM.from_pretrained(
            path or self.source_dir, trust_remote_code=self.trust_remote_code, **kwargs
        )

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer_dir, trust_remote_code=self.trust_remote_code)

    def require_calibration(self, method: str) -> CalibrationSet:
        if self.calibration is None:
            raise QuantizationError(f"{method} needs calibration data; add calibration.dataset to the recipe")
        return self.calibration

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def placement(self) -> dict[str, Any]:
        """``load_model`` arguments that place the model on the step's GPU(s): ``device_map``
        (and ``max_memory`` when the step holds several GPUs); none on the CPU."""
        from quantmill.devices import model_placement

        return model_placement(self.device)


@functools.cache  # read once per process: cache keys ask for every backend's version for every step (~4 ms each)
def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
