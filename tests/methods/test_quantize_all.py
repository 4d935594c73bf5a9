"""Every method × every CPU-capable setting on the project's tiny model: quantize, reload, compare."""

from __future__ import annotations

import json

import pytest

from quantmill.methods.base import package_version
from quantmill.modelinfo import linear_weight_bytes, read_model_shape
from quantmill.quantize import PROVENANCE_FILE, quantize_variant, read_artifact
from quantmill.recipe.matrix import Variant
from quantmill.registry import get_method
from quantmill.runstore import COMPLETE_MARKER
from tests.conftest import DEMO_MODEL
from tests.methods.conftest import prompt_logits

# (method, parameters, storage bits for the size check, max relative logit error).
# torchao's int8-dynamic-intx keeps 4-bit values unpacked in int8 storage with
# per-group scales and zero points (1.73x smaller than fp16, measured), so it is
# checked against "int8 + metadata": more than 1.6x.
SETTINGS = [
    ("gptq", {"bits": 4, "group_size": 128}, 4, 0.35),
    ("gptq", {"bits": 8, "group_size": 128}, 8, 0.05),
    ("gptq", {"bits": 4, "group_size": -1, "act_order": True}, 4, 0.5),
    ("awq", {"bits": 4, "group_size": 128}, 4, 0.35),
    ("rtn", {"bits": 4, "group_size": 128}, 4, 0.35),
    ("rtn", {"bits": 8, "group_size": -1}, 8, 0.05),
    ("int8", {}, 8, 0.1),
    ("int8", {"smoothquant": True}, 8, 0.1),
    ("fp8", {"scheme": "dynamic"}, 8, 0.15),
    ("fp8", {"scheme": "static"}, 8, 0.15),
    ("bnb", {"type": "nf4"}, 4, 0.35),
    ("bnb", {"type": "fp4"}, 4, 0.5),
    ("bnb", {"type": "int8"}, 8, 0.1),
    ("torchao", {"scheme": "int8-weight-only"}, 8, 0.05),
    ("torchao", {"scheme": "int8-dynamic-intx", "weight_bits": 4, "group_size": 32}, "int8+groups", 0.35),
    ("hqq", {"bits": 4, "group_size": 64}, 4, 0.35),
    ("hqq", {"bits": 8, "group_size": 64}, 8, 0.05),
]


def make_variant(method: str, params: dict) -> Variant:
    spec = get_method(method)
    validated = spec.params.model_validate(params)
    return Variant(spec.variant_id(validated), method, validated, (), 0)


def load_output(variant: Variant, path):
    import torch
    from transformers import AutoModelForCausalLM

    load_model = getattr(variant.spec.output_format, "load_model", None)  # the format's own loader (hqq)
    if load_model is not None:
        return load_model(path, "cpu")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "params", "bits", "tolerance"), SETTINGS, ids=[make_variant(m, p).id for m, p, _, _ in SETTINGS]
)
def test_quantize_reload_and_compare(
    method, params, bits, tolerance, tmp_path, calibration, tokenizer, baseline_logits
):
    variant = make_variant(method, params)
    out = tmp_path / variant.id
    artifact = quantize_variant(variant, source_dir=DEMO_MODEL, out_dir=out, calibration=calibration, dtype="float32")

    assert (out / COMPLETE_MARKER).is_file() and not (tmp_path / f".{variant.id}.partial").exists()
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["method"] == method and provenance["parameters"] == variant.params.model_dump(mode="json")
    assert provenance["versions"]["torch"] == package_version("torch")
    assert provenance["peak_rss_bytes"] > 0 and provenance["seconds"] > 0
    assert read_artifact(out).size_bytes == artifact.size_bytes
    if variant.spec.needs_calibration(variant.params):
        assert provenance["calibration"]["fingerprint"] == calibration.fingerprint

    model = load_output(variant, out)
    logits = prompt_logits(model, tokenizer)
    assert logits.isfinite().all()
    relative_error = float((logits - baseline_logits).norm() / baseline_logits.norm())
    assert relative_error < tolerance, relative_error

    # Linear weights shrink by the bit width (plus scales) against the 16-bit baseline.
    shape = read_model_shape(DEMO_MODEL)
    quantized = linear_weight_bytes(out)
    if quantized is None:  # hqq's native format: the whole file against 32-bit storage
        quantized = artifact.size_bytes
        baseline_bytes = shape.parameters * 4
        minimum_ratio = {4: 2.5, 8: 1.6}[bits]  # embeddings stay at 32 bits
    else:
        baseline_bytes = shape.linear_parameters * 2
        minimum_ratio = {4: 3.4, 8: 1.8, "int8+groups": 1.6}[bits]
    assert baseline_bytes / quantized > minimum_ratio, baseline_bytes / quantized


def test_failed_method_leaves_nothing_behind(tmp_path):
    variant = make_variant("gptq", {"bits": 4, "group_size": 128})
    from quantmill.errors import QuantizationError

    with pytest.raises(QuantizationError, match="needs calibration data"):
        quantize_variant(variant, source_dir=DEMO_MODEL, out_dir=tmp_path / "v", calibration=None)
    assert [p.name for p in tmp_path.iterdir()] == [".v.lock"]  # no output, no partial folder
