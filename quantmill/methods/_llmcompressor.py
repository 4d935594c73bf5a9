"""Shared plumbing for the methods backed by llm-compressor (compressed-tensors output)."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantmill.errors import QuantizationError
from quantmill.methods.base import QuantizeContext, package_version
from quantmill.methods.formats import TransformersFormat
from quantmill.methods.spec import Finding, conv1d_findings

if TYPE_CHECKING:  # the servable probe imports the methods and needs no recipe or calibration code
    from quantmill.calibration import CalibrationSet
    from quantmill.modelinfo import ModelShape

log = logging.getLogger(__name__)

# Embeddings and the output head stay in full precision, as in llm-compressor's examples.
IGNORE = ["lm_head"]

EXTRA = "llmcompressor"
PACKAGES = ("llmcompressor", "compressed-tensors")
COMPRESSED_TENSORS = TransformersFormat(
    "compressed-tensors", serve_note="Serve with vLLM:\n\n```bash\nvllm serve {repo}\n```"
)


def linear_only_findings(shape: ModelShape | None) -> list[Finding]:
    """llm-compressor quantizes ``nn.Linear`` layers only (:func:`~quantmill.methods.spec.conv1d_findings`)."""
    return conv1d_findings(shape, "llm-compressor")


def weight_args(bits: int, group_size: int, symmetric: bool):
    """Integer weight quantization: per group, or per output channel for ``group_size == -1``."""
    from compressed_tensors.quantization import QuantizationArgs

    if group_size > 0:
        return QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group", group_size=group_size)
    return QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="channel")


def weight_scheme(
    bits: int, group_size: int, symmetric: bool, layer_bits: tuple[tuple[str, int], ...] = ()
) -> dict[str, Any]:
    """llm-compressor's ``config_groups``: one group per bit width in ``layer_bits`` (``(module name, bits)``
    pairs) naming its layers, then every other linear layer at ``bits``.

    compressed-tensors gives a layer the scheme of its most specific target, so an exact name overrides
    ``Linear``; the named groups come first because its check for unmatched targets stops at a module's
    first matching target and would call the names unmatched after ``Linear``.
    """
    from compressed_tensors.quantization import QuantizationScheme

    groups: dict[str, Any] = {}
    for own_bits in sorted({b for _, b in layer_bits} - {bits}):
        names = sorted(name for name, b in layer_bits if b == own_bits)
        groups[f"group_{len(groups)}"] = QuantizationScheme(
            targets=names, weights=weight_args(own_bits, group_size, symmetric)
        )
    groups[f"group_{len(groups)}"] = QuantizationScheme(
        targets=["Linear"], weights=weight_args(bits, group_size, symmetric)
    )
    return groups


@contextlib.contextmanager
def no_pinning_without_accelerator() -> Iterator[bool]:
    """Skip llm-compressor's ``pin_memory()`` when there is no accelerator.

    AWQ pins cached activations to speed up host→device copies; with no
    accelerator there is no such copy, and ``pin_memory()`` raises "Cannot access
    accelerator device when none is available". Yields whether pinning was disabled.
    """
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield False
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield True
    finally:
        IntermediatesCache.pin_memory = original


# The llm-compressor modules that onload layers to its "main device" (names they import it under).
_ONLOADING_MODULES = ("llmcompressor.pipelines.sequential.pipeline", "llmcompressor.pipelines.data_free.pipeline")


@contextlib.contextmanager
def onloading_to(device: str) -> Iterator[None]:
    """Make llm-compressor onload layers to ``device``.

    Its pipelines onload to ``get_main_device()``, always this process's GPU 0. A Dask worker sees
    only its own slot's GPUs, so GPU 0 is its own; but steps in threads of one process share its
    GPUs, and there a step whose slot is ``cuda:1`` would calibrate on another step's GPU.
    """
    import importlib

    import torch

    if not device.startswith("cuda") or torch.device(device).index in (None, 0):
        yield
        return
    modules: list[Any] = [importlib.import_module(name) for name in _ONLOADING_MODULES]
    originals = [module.get_main_device for module in modules]
    for module in modules:
        module.get_main_device = lambda: torch.device(device)
    try:
        yield
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.get_main_device = original


# glibc's mallopt parameter for the size from which an allocation gets its own mmap
_M_MMAP_THRESHOLD = -3
#: buffers of this size or more are unmapped (returned to the OS) as soon as they are freed
FREED_BUFFERS_RETURNED_FROM = 1 << 20


@functools.cache  # once per process: the setting is the process's
def return_freed_buffers_to_the_os() -> bool:
    """Make glibc unmap every freed buffer of 1 MiB or more at once; True where it could (glibc).

    Quantizing frees large temporaries layer after layer (fp32 copies of weights, Hessians and their
    inverses, fp16 weights replaced by packed ones). glibc gives such a block its own mmap only above a
    threshold that it raises to the size of every such block freed (up to 32 MiB): after the first
    layer, the same sizes come from the heap, which fragments and is not given back. Measured (peak
    resident memory, fresh process, hidden 1024): GPTQ W4 of a 2-layer 70 MB model peaked 401 MB above
    the loaded model before, 330 MB after, and kept 128 MB less once saved; saving an RTN W4 4-layer
    137 MB model peaked 115 MB lower. A fixed threshold turns that adjustment off, for the rest of the
    process (as ``MALLOC_MMAP_THRESHOLD_`` would); allocations under 1 MiB are unaffected, and the
    outputs are byte-identical.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, FREED_BUFFERS_RETURNED_FROM))


#: the size up to which ``compress`` fills one output shard; a tensor larger than it gets a shard of its own
SAVE_SHARD_SIZE = "256MB"
# madvise advice (Linux >= 5.4): reclaim these pages now; nondestructive, the data is read back on the next access
_MADV_PAGEOUT = 21


def checkpoint_mappings(folder: Path) -> list[tuple[int, int]]:
    """``(start, length)`` of this process's memory mappings of the safetensors files in ``folder``."""
    files = {str(path.resolve()) for path in folder.glob("*.safetensors")}
    mappings = []
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() in files:
                start, end = (int(address, 16) for address in fields[0].split("-"))
                mappings.append((start, end - start))
    return mappings


def release_checkpoint_pages(folder: Path) -> bool:
    """Ask the kernel to reclaim this process's resident pages of the checkpoint in ``folder``; True where it could.

    transformers memory-maps the baseline's safetensors, so a tensor quantization never changes (the
    embeddings, the output head) is read only when it is saved, and its pages then stay resident (file-backed,
    counted in the peak) as long as the model holds the mapping. ``MADV_PAGEOUT`` drops them: it is
    nondestructive (a page written since, such as a weight updated in place, keeps its data; unchanged ones are
    read again from the file if needed), and the kernel applies it to file pages only where this process could
    open the file for writing (otherwise it leaves them, harmlessly).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return False
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    results = [libc.madvise(start, length, _MADV_PAGEOUT) for start, length in checkpoint_mappings(folder)]
    return bool(results) and all(result == 0 for result in results)


@contextlib.contextmanager
def releasing_checkpoint_pages_per_shard(folder: Path) -> Iterator[None]:
    """While saving, release the checkpoint in ``folder``'s pages after each shard is written.

    With :data:`SAVE_SHARD_SIZE` shards, the unchanged tensors read to be saved are resident one shard at a
    time instead of all together. transformers writes each shard with ``safe_save_file``, looked up in its
    module at call time.
    """
    from transformers import modeling_utils

    original = modeling_utils.safe_save_file

    def save_shard_then_release(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        release_checkpoint_pages(folder)

    modeling_utils.safe_save_file = save_shard_then_release
    try:
        yield
    finally:
        modeling_utils.safe_save_file = original


def compress(
    ctx: QuantizeContext, modifiers: list, *, calibration: CalibrationSet | None, pipeline: str
) -> dict[str, Any]:
    """Run llm-compressor's ``oneshot`` on a fresh copy of the baseline and save it compressed.

    ``pipeline`` is ``sequential`` (layer by layer, so a model larger than device
    memory can still be calibrated) or ``datafree``. The baseline is loaded lazily in the
    recipe's dtype (safetensors are memory-mapped, so a layer is read when it is first used),
    freed temporaries are returned to the OS (:func:`return_freed_buffers_to_the_os`), and the output is
    saved in shards of :data:`SAVE_SHARD_SIZE`, the baseline's pages read for each released once it is
    written (:func:`releasing_checkpoint_pages_per_shard`).
    """
    from llmcompressor import oneshot

    return_freed_buffers_to_the_os()
    model = ctx.load_model()
    tokenizer = ctx.load_tokenizer()
    kwargs: dict[str, Any] = {}
    if calibration is not None:
        kwargs.update(
            dataset=calibration.texts_dataset(),
            num_calibration_samples=len(calibration.input_ids),
            max_seq_length=max(len(ids) for ids in calibration.input_ids),
            shuffle_calibration_samples=False,  # already drawn with the recipe's seed
        )
    with no_pinning_without_accelerator() as pinning_disabled, onloading_to(ctx.device):
        oneshot(model=model, recipe=modifiers, pipeline=pipeline, tokenizer=tokenizer, **kwargs)
    quantized = sum(1 for module in model.modules() if getattr(module, "quantization_scheme", None) is not None)
    if quantized == 0:  # e.g. Conv1D layers (GPT-2): saving would publish the unquantized model under this name
        raise QuantizationError(
            f"llm-compressor quantized no layer of this {type(model).__name__}: it quantizes nn.Linear layers only"
        )
    with releasing_checkpoint_pages_per_shard(ctx.source_dir):
        model.save_pretrained(ctx.out_dir, save_compressed=True, max_shard_size=SAVE_SHARD_SIZE)
    tokenizer.save_pretrained(ctx.out_dir)
    details: dict[str, Any] = {
        "backend": "llm-compressor",
        "backend_version": package_version("llmcompressor"),
        "compressed_tensors_version": package_version("compressed-tensors"),
        "pipeline": pipeline,
        "reloadable_with_transformers": True,
    }
    if pinning_disabled:
        details["workaround"] = "pin_memory disabled: no accelerator (llm-compressor pins for host→device copies)"
    return details
