"""The method contract's proof: a plug-in method with a format quantmill has never seen runs end to end.

The plug-in is one Python file (``PLUGIN`` below) registered through the
``quantmill.methods`` entry point, as a third-party package would be. It brings
its own output format (int8 weights and per-channel scales in one NumPy ``.npz``
file) with its own loader, file description, usage snippet, library name, tags and
card notes. Nothing in quantmill is edited for it: plan, quantize, evaluate, gate
and card all read what the plug-in declares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from quantmill.testing.recipes import fast_recipe

PLUGIN = '''
"""int8 weights, one scale per output channel, in one NumPy file: a format quantmill does not know."""

from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from quantmill.methods.formats import OutputFormat
from quantmill.methods.spec import MethodParams, MethodSpec

WEIGHTS = "weights.npz"
loaded_folders = []  # every folder this format loaded for evaluation


class NpzParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("bits",)

    bits: int = Field(8, ge=4, le=8)


def _quantizable(name, array):
    return name.endswith(".weight") and array.ndim == 2 and "embed" not in name and "lm_head" not in name


def quantize(params, ctx):
    import torch

    model = ctx.load_model(dtype=torch.float32)
    arrays, quantized = {}, 0
    top = 2 ** (params.bits - 1) - 1
    for name, tensor in model.state_dict().items():
        array = tensor.detach().float().numpy()
        if _quantizable(name, array):
            scale = np.abs(array).max(axis=1, keepdims=True) / top
            scale[scale == 0] = 1
            arrays[name + ":q"] = np.round(array / scale).astype(np.int8)
            arrays[name + ":scale"] = scale.astype(np.float32)
            quantized += 1
        else:
            arrays[name] = array
    np.savez(Path(ctx.out_dir) / WEIGHTS, **arrays)
    model.config.save_pretrained(ctx.out_dir)
    return {"backend": "numpy", "quantized_tensors": quantized}


def dequantized(file):
    import torch

    data = np.load(file)
    state = {}
    for key in data.files:
        name, _, part = key.partition(":")
        if part == "q":
            state[name] = torch.from_numpy(data[key].astype(np.float32) * data[name + ":scale"])
        elif not part:
            state[name] = torch.from_numpy(data[key])
    return state


class NpzFormat(OutputFormat):
    name = "npz-int"
    library_name = "numpy"
    tags = ("npz", "numpy")

    def weights(self, folder):
        return Path(folder) / WEIGHTS

    def load_for_evaluation(self, folder, device, batch_size, *, trust_remote_code=False):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from quantmill.evaluation.backends import transformers_eval_model

        loaded_folders.append(str(folder))
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        ).to(torch.float32)
        model.load_state_dict(dequantized(self.weights(folder)))
        return transformers_eval_model(model.to(device), AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code), batch_size)

    def usage(self, repo_id, provenance):
        return f"```python\\nimport quantmill_npz\\nstate = quantmill_npz.dequantized(\\"{repo_id}/{WEIGHTS}\\")\\n```"

    def card_files(self, provenance):
        return [{"file": WEIGHTS, "quantized tensors": str(provenance["details"]["quantized_tensors"])}]


SPEC = MethodSpec(
    name="npz",
    params=NpzParams,
    summary="int weights per output channel in one NumPy file (a test plug-in)",
    output_format=NpzFormat(),
    extra="npz-plugin",
    packages=("numpy",),
    variant_id=lambda p: f"npz-w{p.bits}",
    bits_per_weight=lambda p: float(p.bits),
    quantize=quantize,
    gpu="none",
    cost_note=lambda p: "numpy only",
    card_notes=lambda p, details: f"npz notes: {details['quantized_tensors']} matrices at {p.bits} bits per channel",
)
'''

RECIPE = fast_recipe(
    "    - {method: npz, bits: 8}\n",
    gates="  - {metric: tiny_world_mc/acc, min_recovery: 0.95}\n",
    publish="publish: {target: local, path: zoo, namespace: org, license: apache-2.0}\n",
)


def install_plugin(folder: Path, module: str, text: str, entry: str, monkeypatch) -> None:
    """Install ``text`` as module ``module`` with a ``quantmill.methods`` entry point, as pip would."""
    from quantmill import registry

    dist_info = folder / f"{module}-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (folder / f"{module}.py").write_text(text)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[quantmill.methods]\n{entry}\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, module, raising=False)
    registry.method_targets.cache_clear()


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    from quantmill import registry

    install_plugin(tmp_path / "site", "quantmill_npz", PLUGIN, "npz = quantmill_npz:SPEC", monkeypatch)
    yield
    registry.method_targets.cache_clear()  # forget the plug-in once its folder leaves sys.path


def test_a_plugin_method_with_its_own_format_runs_end_to_end(plugin, tmp_path, monkeypatch):
    from quantmill import cachekeys, stages
    from quantmill.methods.base import package_version
    from quantmill.plan import build_plan
    from quantmill.publish.publisher import publish_variant
    from quantmill.publish.targets import LocalZoo, front_matter
    from quantmill.recipe import load_recipe
    from quantmill.resolve import resolve_model

    (tmp_path / "recipe.yaml").write_text(RECIPE)
    loaded = load_recipe(tmp_path / "recipe.yaml")
    (variant,) = loaded.variants
    plugin_module = sys.modules["quantmill_npz"]

    # plan: the plug-in's format, size estimate, cost note and GPU use
    (row,) = build_plan(loaded).variants
    assert (row.id, row.output_format, row.setting, row.gpu) == ("npz-w8", "npz-int", "w8 · numpy only", "none")
    assert row.expected_bytes is not None and row.expected_bytes < build_plan(loaded).baseline_bytes

    # cache keys: the plug-in's backend packages are in its key, so their upgrade invalidates it
    key = cachekeys.quantize_key("rev", variant, None, "float32", "cpu")
    with monkeypatch.context() as patch:
        patch.setattr(cachekeys, "package_version", lambda name: "99" if name == "numpy" else package_version(name))
        assert cachekeys.quantize_key("rev", variant, None, "float32", "cpu") != key

    # quantize: provenance records the plug-in's packages; the driver added the tokenizer the format carries
    resolved = resolve_model(loaded)
    baseline = stages.evaluate_baseline(loaded, resolved, "cpu")
    artifact = stages.quantize_one(loaded, variant, resolved, None, "cpu", tmp_path / "artifacts" / variant.id)
    assert artifact.output_format == "npz-int" and (artifact.path / "weights.npz").is_file()
    assert artifact.provenance["versions"]["numpy"] == package_version("numpy")
    assert (artifact.path / "tokenizer_config.json").is_file()

    # evaluate: the numbers come through the plug-in's loader, and its weights file is what is measured
    result = stages.evaluate_variant(loaded, variant, artifact.path, "cpu", resolved.tokenizer_path)
    assert plugin_module.loaded_folders == [str(artifact.path)]
    accuracy, base_accuracy = result.value("tiny_world_mc/acc"), baseline.value("tiny_world_mc/acc")
    assert abs(accuracy - base_accuracy) <= 0.05, (accuracy, base_accuracy)
    assert result.details["size_bytes"] == (artifact.path / "weights.npz").stat().st_size
    verdict = stages.gate_variant(variant, result, baseline)
    assert verdict.status == "passed", verdict

    # card: the format's snippet, library name, tags and file table, and the method's notes
    published = publish_variant(
        loaded,
        variant,
        artifact_path=artifact.path,
        provenance=artifact.provenance,
        evaluation=result,
        baseline=baseline,
        verdict=verdict,
        revision=resolved.revision,
        target=LocalZoo(tmp_path / "zoo"),
        run_id="run-1",
    )
    card = (tmp_path / "zoo" / published.repo_id / "README.md").read_text()
    metadata = front_matter(card)
    assert metadata["library_name"] == "numpy"
    assert {"quantmill", "npz", "numpy"} <= set(metadata["tags"])
    assert f'quantmill_npz.dequantized("{published.repo_id}/weights.npz")' in card
    assert "| file | quantized tensors |" in card and "| weights.npz | " in card
    assert "npz notes: " in card and " matrices at 8 bits per channel" in card
    assert "- Method: `npz` (npz-int)" in card


def test_an_entry_point_that_is_not_a_method_is_refused_clearly(tmp_path, monkeypatch):
    from quantmill import registry
    from quantmill.errors import InvalidMethodError

    install_plugin(
        tmp_path / "site", "quantmill_bad", "SPEC = {'name': 'bad'}\n", "bad = quantmill_bad:SPEC", monkeypatch
    )
    try:
        with pytest.raises(InvalidMethodError, match=r"method 'bad' \(quantmill_bad:SPEC\) gives a dict, not a"):
            registry.get_method("bad")
    finally:
        registry.method_targets.cache_clear()
