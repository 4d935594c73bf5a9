"""Mixed-precision allocation on synthetic sensitivities: the budget, the choice of layers, determinism."""

from __future__ import annotations

import pytest

from quantmill.methods.gguf import TENSOR_TYPES
from quantmill.recipe.matrix import Variant
from quantmill.search.mixed import allocation_path, choose, levels_for, recipe_fragment, to_variant, type_probe
from quantmill.search.sensitivity import Level, Sensitivity, Unit, fake_quantize

pytestmark = pytest.mark.fast

LEVELS = (Level(2, 2.25, 2, 64), Level(4, 4.25, 4, 64), Level(8, 8.25, 8, 64))
UNITS = tuple(
    Unit(f"model.layers.{i}.{kind}", f"model.layers.{i}.{kind}", n)
    for i in range(2)
    for kind, n in (("self_attn.q_proj", 1000), ("mlp.down_proj", 2000), ("mlp.up_proj", 2000))
)
# KLD at 2/4/8 bits: down_proj of layer 0 is very sensitive, the q_projs hardly at all
KLD = {
    "model.layers.0.mlp.down_proj": {"2": 5.0, "4": 0.5, "8": 0.01},
    "model.layers.0.mlp.up_proj": {"2": 0.4, "4": 0.05, "8": 0.001},
    "model.layers.0.self_attn.q_proj": {"2": 0.02, "4": 0.005, "8": 0.0},
    "model.layers.1.mlp.down_proj": {"2": 0.8, "4": 0.1, "8": 0.002},
    "model.layers.1.mlp.up_proj": {"2": 0.3, "4": 0.04, "8": 0.001},
    "model.layers.1.self_attn.q_proj": {"2": 0.01, "4": 0.004, "8": 0.0},
}
SENSITIVITY = Sensitivity(UNITS, LEVELS, KLD, tokens=512)


def bits_of(assignment) -> dict[str, int]:
    return {unit.key: level.value for unit, level in assignment.levels}


def test_each_choice_fits_its_target_and_the_choices_grow_in_size():
    chosen = choose(allocation_path(SENSITIVITY), LEVELS, steps=3)
    targets = [2.25 + 6.0 * step / 4 for step in (1, 2, 3)]  # 3.75, 5.25, 6.75 bits per weight
    assert len(chosen) == 3
    for assignment, target in zip(chosen, targets, strict=True):
        assert assignment.bits_per_weight <= target
    assert [a.bytes for a in chosen] == sorted(a.bytes for a in chosen)
    assert chosen[0].loss > chosen[1].loss > chosen[2].loss


def test_insensitive_layers_stay_low_while_sensitive_ones_go_up():
    smallest = bits_of(choose(allocation_path(SENSITIVITY), LEVELS, steps=3)[0])
    assert smallest["model.layers.0.mlp.down_proj"] > 2  # the most damage per byte at 2 bits
    assert smallest["model.layers.0.self_attn.q_proj"] == smallest["model.layers.1.self_attn.q_proj"] == 2


def test_the_allocation_is_deterministic_whatever_the_units_order_even_on_ties():
    twins = {"model.layers.9.mlp.gate_proj": {"2": 0.3, "4": 0.04, "8": 0.001}}  # exactly as layer 1's up_proj
    units = (*UNITS, Unit("model.layers.9.mlp.gate_proj", "model.layers.9.mlp.gate_proj", 2000))
    tied = Sensitivity(units, LEVELS, {**KLD, **twins}, 512)
    shuffled = Sensitivity(tuple(reversed(units)), tuple(reversed(LEVELS)), dict(reversed(tied.kld.items())), 512)
    once = [bits_of(a) for a in allocation_path(tied)]
    assert once == [bits_of(a) for a in allocation_path(shuffled)]
    assert [bits_of(a) for a in choose(allocation_path(tied), LEVELS, 5)] == [
        bits_of(a) for a in choose(allocation_path(shuffled), LEVELS, 5)
    ]


def test_a_chosen_assignment_is_an_ordinary_variant_that_its_recipe_row_makes_again():
    from quantmill.registry import get_method

    assignment = choose(allocation_path(SENSITIVITY), LEVELS, steps=3)[1]
    variant = to_variant("gptq", assignment)
    assert variant.id.startswith("gptq-w") and "-mix" in variant.id
    row = recipe_fragment(variant)
    spec = get_method(row["method"])
    again = spec.params.model_validate({k: v for k, v in row.items() if k != "method"})
    assert Variant(spec.variant_id(again), "gptq", again, (), 0).id == variant.id and again == variant.params
    named = dict(variant.params.layer_bits)
    assert all(bits_of(assignment)[name] == bits for name, bits in named.items())
    assert all(bits_of(assignment)[name] == variant.params.bits for name in bits_of(assignment) if name not in named)


def test_the_rtn_probe_rounds_to_the_levels_grid():
    import torch

    weight = torch.randn(4, 128)
    for level in LEVELS:
        grid = fake_quantize(weight, level).reshape(4, 2, 64)
        assert max(len(group.unique()) for row in grid for group in row) <= 2**level.probe_bits
    assert torch.equal(fake_quantize(weight, Level("f16", 16.0, 0, -1)), weight)


def test_of_two_layers_whose_upgrade_saves_as_much_the_smaller_goes_up_first():
    units = (Unit("small", "small", 1000), Unit("large", "large", 4000))
    # the large layer saves a little more in all, but four times less per byte
    kld = {"small": {"2": 1.0, "4": 0.0, "8": 0.0}, "large": {"2": 1.2, "4": 0.0, "8": 0.0}}
    path = allocation_path(Sensitivity(units, LEVELS, kld, 512))
    assert bits_of(path[1]) == {"small": 4, "large": 2}
    assert bits_of(path[-1]) == {"small": 4, "large": 4}  # 8 bits saves nothing more: never bought


# (bits, weights per scale, symmetric) of each type's RTN probe, read off ggml-common.h's block structs
GGML_PROBES = {
    "q2_k": (2, 16, False),
    "q3_k": (3, 16, True),
    "q4_k": (4, 32, False),
    "q5_k": (5, 32, False),
    "q6_k": (6, 16, True),
    "q4_0": (4, 32, True),
    "q4_1": (4, 32, False),
    "q5_0": (5, 32, True),
    "q5_1": (5, 32, False),
    "q8_0": (8, 32, True),
    "iq4_nl": (4, 32, True),
    "f16": (0, -1, True),
}


def test_every_tensor_type_a_recipe_may_name_is_a_level_with_its_blocks_probe():
    """``TENSOR_TYPES`` (methods/gguf.py) is the one list of types: every type it allows is a level of a mixed
    entry, probed as ggml lays out its blocks."""
    levels = levels_for({"method": "gguf", "types": list(TENSOR_TYPES)})
    assert sorted(level.value for level in levels) == sorted(TENSOR_TYPES)
    assert {name: type_probe(name) for name in GGML_PROBES} == GGML_PROBES


def test_a_mixed_variants_setting_says_it_is_mixed_and_a_uniform_ones_does_not():
    """The label the console, the report and the card show (``plan.variant_setting``)."""
    from quantmill.plan import variant_setting
    from quantmill.registry import get_method

    gguf = get_method("gguf")
    mixed = gguf.params.model_validate({"type": "q2_k", "tensor_types": {"attn_v": "q6_k"}})
    uniform = gguf.params.model_validate({"type": "q2_k"})
    assert variant_setting(Variant(gguf.variant_id(mixed), "gguf", mixed, (), -1)) == "q2_k+mix"
    assert variant_setting(Variant(gguf.variant_id(uniform), "gguf", uniform, (), 0)) == "q2_k"
    layered = to_variant("rtn", choose(allocation_path(SENSITIVITY), LEVELS, steps=3)[1])
    assert variant_setting(layered).endswith("+mix")
