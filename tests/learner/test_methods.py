"""The method registry: six methods, "did you mean", one entry per new method."""

from __future__ import annotations

import pytest

from habc_learner.core import methods as M
from habc_learner.core.labeling import Source


def test_registry_has_the_six_methods() -> None:
    assert {"sft", "imit_dagger", "imit_recap", "habc_v", "habc", "habc_ir"} <= set(M.METHODS)


def test_unknown_method_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match="did you mean 'imit_dagger'"):
        M.get_method("imit_daggr")
    with pytest.raises(ValueError, match="Valid methods"):
        M.get_method("zzz")


def test_method_data_and_weighting() -> None:
    assert M.get_method("sft").mixing_dict == {"demo": 1.0}
    assert M.get_method("imit_dagger").mixing_dict == {"demo": 0.5, "intervention": 0.5}
    recap = M.get_method("imit_recap")
    assert (
        recap.labeling == "naive"
        and recap.train_parent_value
        and "intervention" not in recap.mixing_dict
    )
    habc_v, habc, ir = M.get_method("habc_v"), M.get_method("habc"), M.get_method("habc_ir")
    assert habc_v.train_viability and not habc_v.train_efficiency
    assert habc.train_efficiency and not habc.intervention_reweighting
    assert (
        ir.intervention_reweighting
        and not ir.ir_active(ir.ir_from_round - 1)
        and ir.ir_active(ir.ir_from_round)
    )


def test_adding_a_method_is_one_entry() -> None:
    entry = M.MethodConfig(
        name="test_only_successes",
        description="demos plus successful rollouts, uniform weights",
        mixing=(("demo", 1.0), ("rollout_success", 1.0)),
    )
    try:
        M.register_method(entry)
        assert M.get_method("test_only_successes") is entry
        with pytest.raises(ValueError, match="already registered"):
            M.register_method(entry)
    finally:
        M.METHODS.pop("test_only_successes", None)


def test_method_validation_names_bad_values() -> None:
    with pytest.raises(ValueError, match="weighting 'awr' is not one of"):
        M.MethodConfig(name="x", description="", mixing=(("demo", 1.0),), weighting="awr")
    with pytest.raises(ValueError, match="source 'rollouts' is not one of"):
        M.MethodConfig(name="x", description="", mixing=(("rollouts", 1.0),))
    with pytest.raises(ValueError, match="needs train_efficiency"):
        M.MethodConfig(
            name="x",
            description="",
            mixing=(("demo", 1.0),),
            weighting="habc",
            train_viability=True,
        )
    assert M.method_from_dict(M.dataclasses.asdict(M.get_method("habc"))) == M.get_method("habc")


def test_uniform_weighting_is_the_weight_table_with_unit_gate() -> None:
    import torch

    src = torch.tensor(
        [
            Source.DEMO,
            Source.ROLLOUT_SUCCESS,
            Source.ROLLOUT_FAILURE,
            Source.INTERVENTION,
            Source.UNLABELED,
        ]
    )
    w, _ = M.compute_w_tilde(M.get_method("sft"), M.WeightInputs(source=src))
    assert w.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
