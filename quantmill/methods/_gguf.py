"""The GGUF method's work: llama.cpp conversion, importance matrix, quantization, fallbacks.

Kept apart from ``gguf.py`` (the declaration) because it is the one method whose
work spans several tools and shared intermediates.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from quantmill import steplog
from quantmill.errors import QuantizationError, QuantmillError
from quantmill.llamacpp import LlamaCpp, LlamaCppError, find_llama_cpp, parse_fallbacks, route_llama_log, run_tool
from quantmill.methods._sentencepiece import is_llama_style_bpe, write_sentencepiece_model
from quantmill.methods.base import QuantizeContext, package_version
from quantmill.runstore import exclusive_lock

log = logging.getLogger(__name__)

IMATRIX_CONTEXT = 128
# the vocabulary route for Llama-style BPE tokenizers without tokenizer.model (see vocabulary_route)
SENTENCEPIECE_FROM_MERGES = "tokenizer.model built from tokenizer.json merge ranks"


def _short(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def model_name(ctx: QuantizeContext) -> str:
    return ctx.source_dir.resolve().name


def vocabulary_route(source_dir: Path) -> str:
    """How the converter gets the vocabulary: llama.cpp's own reading of the folder, or, for a
    Llama-style BPE ``tokenizer.json`` without ``tokenizer.model``, a rank-scored SentencePiece model."""
    return SENTENCEPIECE_FROM_MERGES if is_llama_style_bpe(source_dir) else "llama.cpp"


#: config keys llama.cpp's converter reads that transformers 5 no longer writes: model type → {key: where its
#: value is now, a dotted path} (a GPT-2 saved by transformers 5 has ``n_positions`` but no ``n_ctx``: KeyError in
#: the converter). Only keys transformers' config class keeps help: the converter reads the config through
#: ``AutoConfig``, so GPT-NeoX's ``rotary_pct``, which transformers 5 folds into ``rope_parameters``, cannot be
#: restored this way (its conversion fails with ``KeyError: 'rotary_pct'``, reported in one line).
LEGACY_CONFIG_KEYS: dict[str, dict[str, str]] = {"gpt2": {"n_ctx": "n_positions"}}


def _lookup(config: dict, path: str) -> object:
    value: object = config
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def converter_config(source_dir: Path) -> dict | None:
    """``config.json`` with the keys llama.cpp's converter expects restored (:data:`LEGACY_CONFIG_KEYS`);
    None when it needs none."""
    try:
        config = json.loads((source_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    legacy = LEGACY_CONFIG_KEYS.get(str(config.get("model_type")), {})
    missing = {key: _lookup(config, now) for key, now in legacy.items() if key not in config}
    missing = {key: value for key, value in missing.items() if value is not None}
    return {**config, **missing} if missing else None


@contextlib.contextmanager
def _conversion_folder(ctx: QuantizeContext, route: str) -> Iterator[Path]:
    """The folder the converter reads: the source itself, or a staging copy with the SentencePiece model
    and/or a ``config.json`` with the keys the converter expects (:func:`converter_config`).

    The staging copy links the source's files (the user's model folder is never written to).
    """
    config = converter_config(ctx.source_dir)
    if route != SENTENCEPIECE_FROM_MERGES and config is None:
        yield ctx.source_dir
        return
    ctx.shared_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="convert-", dir=ctx.shared_dir) as staging:
        folder = Path(staging)
        for entry in ctx.source_dir.iterdir():
            if not (config is not None and entry.name == "config.json"):
                (folder / entry.name).symlink_to(entry.resolve())
        if config is not None:
            (folder / "config.json").write_text(json.dumps(config, indent=2))
        if route == SENTENCEPIECE_FROM_MERGES:
            write_sentencepiece_model(ctx.source_dir, folder / "tokenizer.model")
        yield folder


def base_gguf(llama: LlamaCpp, ctx: QuantizeContext, outtype: str = "f16") -> Path:
    """The unquantized GGUF of the baseline, converted once per revision (and vocabulary route)."""
    route = vocabulary_route(ctx.source_dir)
    target = ctx.shared_dir / f"base-{outtype}-{_short(ctx.source_revision, route)}.gguf"
    with exclusive_lock(target.with_suffix(target.suffix + ".lock")):  # parallel variants make it once
        if not target.is_file():
            partial = target.with_suffix(".partial")
            with _conversion_folder(ctx, route) as folder:
                try:
                    llama.convert(folder, partial, outtype)
                except LlamaCppError as exc:  # its whole output is in the step's log
                    raise QuantizationError(
                        f"llama.cpp's converter failed for {_architecture(ctx.source_dir) or model_name(ctx)}: "
                        f"{converter_failure(str(exc))}"
                    ) from exc
            os.replace(partial, target)
    return target


_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Exit)\b:?.*$")


def converter_failure(output: str) -> str:
    """The one line of a failed conversion's output that says why: its last exception line (``KeyError: 'n_ctx'``,
    ``NotImplementedError: BPE pre-tokenizer was not recognized …``), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    reasons = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return (reasons or lines or ["no output"])[-1][:300]


def importance_matrix(llama: LlamaCpp, ctx: QuantizeContext, base: Path) -> tuple[Path, dict]:
    """llama-imatrix over the recipe's calibration texts, computed once per revision and data."""
    calibration = ctx.require_calibration("a GGUF importance matrix")
    tool = llama.tool("llama-imatrix")
    if tool is None:
        raise QuantizationError("an importance matrix needs llama.cpp's llama-imatrix: run `quantmill setup llama-cpp`")
    target = ctx.shared_dir / f"imatrix-{_short(ctx.source_revision, calibration.fingerprint)}.gguf"
    info = {
        "dataset": calibration.source,
        "fingerprint": calibration.fingerprint,
        "samples": len(calibration.texts),
        "context": IMATRIX_CONTEXT,
    }
    with exclusive_lock(target.with_suffix(target.suffix + ".lock")):  # parallel variants make it once
        if not target.is_file():
            text = ctx.shared_dir / f"calibration-{calibration.fingerprint[:16]}.txt"
            text.write_text("\n".join(calibration.texts) + "\n")
            partial = target.with_suffix(".partial.gguf")
            output = run_tool(
                [
                    str(tool),
                    "-m",
                    str(base),
                    "-f",
                    str(text),
                    "-o",
                    str(partial),
                    "-c",
                    str(IMATRIX_CONTEXT),
                    "-t",
                    str(os.cpu_count() or 1),
                ],
                what="llama-imatrix",
            )
            os.replace(partial, target)
            target.with_suffix(".json").write_text(json.dumps({**info, "chunks": output.count("[") or None}))
    return target, info


@contextlib.contextmanager
def _captured_llama_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines (fallbacks are reported there) in in-process calls; the step log gets them too."""
    import llama_cpp

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", errors="replace"))
        steplog.append(lines[-1])

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        route_llama_log()


def _quantize_in_process(base: Path, out: Path, gguf_type: str) -> str:
    import llama_cpp

    name = "LLAMA_FTYPE_ALL_F32" if gguf_type == "f32" else f"LLAMA_FTYPE_MOSTLY_{gguf_type.upper()}"
    ftype = getattr(llama_cpp, name, None)
    if ftype is None:
        raise QuantizationError(f"this llama-cpp-python has no {gguf_type.upper()} quantization type")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    with _captured_llama_log() as lines:
        status = llama_cpp.llama_model_quantize(str(base).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0:
        raise QuantizationError(f"llama_model_quantize failed for {gguf_type.upper()}: {''.join(lines)[-800:]}")
    return "".join(lines)


def describe_file(path: Path, *, per_tensor: bool = False) -> dict:
    """Tensor types, parameter count and effective bits per weight, read from the GGUF file itself;
    ``per_tensor`` adds each matrix's type (``tensors``), the realised per-tensor precision."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    types = Counter(t.tensor_type.name for t in reader.tensors)
    parameters = sum(int(t.n_elements) for t in reader.tensors)
    size = path.stat().st_size
    described = {
        "tensor_types": dict(types),
        "parameters": parameters,
        "bytes": size,
        "bits_per_weight": round(size * 8 / parameters, 3),
    }
    if per_tensor:
        described["tensors"] = {t.name: t.tensor_type.name for t in reader.tensors if len(t.shape) >= 2}
    return described


def tensor_type_arguments(tensor_types: tuple[tuple[str, str], ...], folder: Path) -> list[str]:
    """llama-quantize's ``--tensor-type-file``, written into ``folder``: one ``pattern=type`` per line, in the
    map's order (llama.cpp gives a tensor the type of the first pattern that matches it)."""
    if not tensor_types:
        return []
    file = folder / "tensor-types.txt"
    file.write_text("".join(f"{pattern}={kind}\n" for pattern, kind in tensor_types))
    return ["--tensor-type-file", str(file)]


_REGISTER = re.compile(r"ModelBase\.register\(([^)]*)\)")
_QUOTED = re.compile(r"[\"']([A-Za-z0-9_]+)[\"']")


@functools.cache
def converter_architectures(tree: Path) -> frozenset[str]:
    """The ``architectures`` names llama.cpp's converter in ``tree`` registers a model class for (read from its
    source: ``@ModelBase.register("LlamaForCausalLM", …)`` in ``convert_hf_to_gguf.py`` or ``conversion/*.py``)."""
    names: set[str] = set()
    for source in [tree / "convert_hf_to_gguf.py", *sorted((tree / "conversion").glob("*.py"))]:
        with contextlib.suppress(OSError):
            for call in _REGISTER.findall(source.read_text(errors="replace")):
                names.update(_QUOTED.findall(call))
    return frozenset(names)


def _architecture(model_dir: Path) -> str | None:
    try:
        architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or [None]
    except (OSError, ValueError, AttributeError):
        return None
    return architectures[0] if isinstance(architectures[0], str) else None


def unsupported_architecture(architecture: str | None) -> str | None:
    """Why llama.cpp's converter cannot convert a model of this ``architectures`` name, or None when it can
    (or when it cannot be told: no architecture, no llama.cpp tree set up here)."""
    if not architecture:
        return None
    try:
        llama = find_llama_cpp()
    except QuantmillError:
        return None
    if llama is None:
        return None
    known = converter_architectures(llama.tree)
    if not known or architecture in known:
        return None
    return f"llama.cpp's converter has no support for {architecture} (its tree: {llama.tree})"


def quantize(params, ctx: QuantizeContext) -> dict:
    llama = find_llama_cpp()
    if llama is None:
        raise QuantizationError(
            "GGUF needs llama.cpp's convert_hf_to_gguf.py: run `quantmill setup llama-cpp` "
            "(or set LLAMA_CPP_DIR to a llama.cpp checkout)"
        )
    unsupported = unsupported_architecture(_architecture(ctx.source_dir))
    if unsupported:  # known before converting (validate says it too when the model's config is on disk)
        raise QuantizationError(f"{model_name(ctx)}: gguf cannot convert this model: {unsupported}")
    gguf_type = params.type
    out = ctx.out_dir / f"{model_name(ctx)}-{gguf_type.upper()}.gguf"
    if gguf_type in ("f16", "bf16", "f32"):
        converted = base_gguf(llama, ctx, gguf_type)
        shutil.copyfile(converted, out)
        return {
            "backend": "llama.cpp",
            "tool": "convert_hf_to_gguf.py",
            "vocabulary": vocabulary_route(ctx.source_dir),
            "file": out.name,
            "fallbacks": [],
            "imatrix": None,
            "llama_cpp_origin": llama.origin,
            **describe_file(out),
        }
    base = base_gguf(llama, ctx)
    imatrix = None
    tool = llama.tool("llama-quantize")
    if params.use_imatrix:
        imatrix_path, imatrix = importance_matrix(llama, ctx, base)
        shutil.copyfile(imatrix_path, ctx.out_dir / "imatrix.gguf")  # published beside the GGUF files
    if tool is not None:
        command = [str(tool)]
        if imatrix is not None:
            command += ["--imatrix", str(imatrix_path)]
        with tempfile.TemporaryDirectory(prefix="quantize-") as scratch:
            command += tensor_type_arguments(params.tensor_types, Path(scratch))
            log_text = run_tool(
                command + [str(base), str(out), gguf_type.upper(), str(os.cpu_count() or 1)], what="llama-quantize"
            )
        how = "llama-quantize"
    elif params.tensor_types:
        raise QuantizationError("per-tensor types need llama.cpp's llama-quantize: run `quantmill setup llama-cpp`")
    else:
        log_text = _quantize_in_process(base, out, gguf_type)
        how = "llama_cpp.llama_model_quantize (in-process; tools not built, so no imatrix)"
    return {
        "backend": "llama.cpp",
        "backend_version": package_version("llama-cpp-python"),
        "tool": how,
        "llama_cpp_origin": llama.origin,
        "file": out.name,
        "base": base.name,
        "vocabulary": vocabulary_route(ctx.source_dir),
        "fallbacks": parse_fallbacks(log_text),
        "imatrix": imatrix,
        **describe_file(out, per_tensor=bool(params.tensor_types)),
    }
