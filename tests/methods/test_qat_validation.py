"""QAT's checkpoint choice: the held-out split, the validation curve, early stopping, the small-data rule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from quantmill.errors import QuantizationError
from quantmill.methods._qat_validation import MAX_PASSES, ValidationCurve, small_data_warning, split_validation
from quantmill.methods.qat import QATParams, TrainingSpec, training_cost

TEXTS = [f"text number {i}" for i in range(40)]


@pytest.mark.fast
def test_split_is_deterministic_disjoint_and_order_free():
    training, held_out = split_validation(TEXTS, 0.1)
    assert len(held_out) == 4 and len(training) == 36
    assert not set(training) & set(held_out) and set(training) | set(held_out) == set(TEXTS)
    shuffled_training, shuffled_held_out = split_validation(list(reversed(TEXTS)), 0.1)
    assert shuffled_held_out == held_out and sorted(shuffled_training) == sorted(training)


@pytest.mark.fast
def test_every_copy_of_a_held_out_text_leaves_training():
    _, held_out = split_validation(TEXTS, 0.1)
    training, again = split_validation(TEXTS + held_out, 0.1)
    assert again == held_out and not set(training) & set(held_out)


@pytest.mark.fast
def test_split_keeps_at_least_one_text_on_each_side():
    assert split_validation(["a", "b"], 0.5) == (["b"], ["a"]) or split_validation(["a", "b"], 0.5) == (["a"], ["b"])
    assert len(split_validation(TEXTS[:3], 0.01)[1]) == 1
    with pytest.raises(QuantizationError, match="at least 2 distinct"):
        split_validation(["same", "same"], 0.1)


@pytest.mark.fast
def test_curve_keeps_the_best_step_and_stops_after_patience():
    curve = ValidationCurve(patience=2)
    assert curve.record(0, 1.0) and not curve.improved
    assert curve.record(10, 0.9) and curve.improved
    assert not curve.record(20, 0.95) and not curve.exhausted
    assert not curve.record(30, 0.9)  # equal is not better
    assert curve.exhausted and curve.best_step == 10 and curve.best_loss == 0.9
    assert curve.points == [{"step": s, "loss": v} for s, v in [(0, 1.0), (10, 0.9), (20, 0.95), (30, 0.9)]]


@pytest.mark.fast
def test_an_improvement_must_exceed_min_improvement():
    curve = ValidationCurve(patience=5, min_improvement=0.01)
    curve.record(0, 1.0)
    assert not curve.record(10, 0.995) and curve.best_step == 0  # 0.5 %: noise
    assert curve.record(20, 0.985) and curve.best_step == 20  # 1.5 %
    assert not curve.record(30, 0.98) and curve.evaluations_since_best == 1  # 0.5 % below the new best


@pytest.mark.fast
def test_curve_without_improvement_keeps_the_start():
    curve = ValidationCurve(patience=3)
    curve.record(0, 1.0)
    for step in (10, 20, 30):
        curve.record(step, 1.0 + step / 1000)
    assert curve.exhausted and not curve.improved and curve.best_step == 0


@pytest.mark.fast
def test_small_data_rule_counts_passes_over_the_training_tokens():
    training = TrainingSpec(steps=100, batch_size=8, seq_len=64)  # 51,200 tokens planned
    assert small_data_warning(training, documents=1000, training_tokens=51_200 // MAX_PASSES) is None
    message = small_data_warning(training, documents=100, training_tokens=1_000)
    assert message is not None and "51 times" in message and "100 training texts" in message


@pytest.mark.fast
def test_validation_parameters_are_validated_and_planned():
    params = QATParams.model_validate(
        {"training": {"steps": 50, "validation": {"every": 5, "patience": 2, "on_no_improvement": "fail"}}}
    )
    assert (
        training_cost(params)
        == "QAT 50 steps, 51,200 tokens, validated every 5 steps (patience 2; no improvement: fail)"
    )
    for bad in ({"fraction": 0}, {"fraction": 0.9}, {"every": 0}, {"patience": 0}, {"on_no_improvement": "hope"}):
        with pytest.raises(ValidationError):
            QATParams.model_validate({"training": {"validation": bad}})


def _quantize_with_lr(tmp_path, calibration, learning_rate: float, on_no_improvement: str):
    from quantmill.quantize import quantize_variant
    from tests.conftest import DEMO_MODEL
    from tests.methods.test_quantize_all import make_variant

    training = {"steps": 4, "batch_size": 2, "seq_len": 32, "learning_rate": learning_rate, "schedule": "constant"}
    training["validation"] = {"every": 1, "patience": 2, "on_no_improvement": on_no_improvement}
    variant = make_variant("qat", {"bits": 2, "group_size": 32, "training": training})
    return quantize_variant(variant, source_dir=DEMO_MODEL, out_dir=tmp_path / "q", calibration=calibration)


@pytest.mark.slow
def test_qat_that_only_hurts_returns_its_starting_point(tmp_path, calibration, tokenizer, caplog):
    """A learning rate of 0.5 wrecks the model at the first step: the starting point comes back, with a warning."""
    import torch
    from torchao.quantization import quantize_
    from transformers import AutoModelForCausalLM

    from quantmill.methods._qat import base_config
    from tests.conftest import DEMO_MODEL
    from tests.methods.conftest import prompt_logits

    artifact = _quantize_with_lr(tmp_path, calibration, 0.5, "keep_start")
    training = artifact.provenance["details"]["training"]
    validation = training["validation"]
    assert validation["returned"] == "starting point" and validation["best_step"] == 0
    assert training["steps"] == 2 and training["stopped_early"]  # patience 2, one evaluation per step
    assert [point["step"] for point in validation["curve"]] == [0, 1, 2]
    assert any("no QAT step improved" in warning for warning in training["warnings"])
    assert "no QAT step improved" in caplog.text
    # The checkpoint is the untrained baseline under the same torchao config, exactly.
    start = AutoModelForCausalLM.from_pretrained(DEMO_MODEL, dtype=torch.float32)
    params = artifact.provenance["parameters"]
    quantize_(start, base_config(QATParams.model_validate(params)), filter_fn=_linear_except_embeddings)
    saved = AutoModelForCausalLM.from_pretrained(artifact.path)
    assert torch.equal(prompt_logits(saved, tokenizer), prompt_logits(start, tokenizer))


@pytest.mark.slow
def test_qat_that_only_hurts_fails_when_the_recipe_asks(tmp_path, calibration):
    with pytest.raises(QuantizationError, match="no QAT step improved.*asks to fail"):
        _quantize_with_lr(tmp_path, calibration, 0.5, "fail")
    assert not (tmp_path / "q").exists()


def _linear_except_embeddings(module, name: str) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) and "lm_head" not in name


@pytest.mark.fast
def test_card_notes_name_the_returned_checkpoint_and_the_warnings():
    from quantmill.methods.qat import training_notes

    training = {"steps": 40, "planned_steps": 150, "tokens": 20480, "seconds": 9.5, "warnings": ["small training set"]}
    training["loss_curve"] = [{"step": 1, "loss": 1.2}, {"step": 40, "loss": 0.7}]
    training["validation"] = {"documents": 32, "start_loss": 0.889, "best_loss": 0.882, "best_step": 10}
    training["validation"]["returned"] = "step 10"
    notes = training_notes(QATParams(), {"training": training})
    assert notes is not None and "40 of 150 steps" in notes and "best 0.882 at step 10; returned: step 10" in notes
    assert "Warning: small training set" in notes
