"""Power of the benchmark: the SFT plateau, the band tuner and the paired bootstrap.

Every expected number below is worked out by hand in the comment beside it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from habc_learner.core.power import (
    PlateauStopper,
    band_distance,
    paired_bootstrap,
    paired_difference,
    tune_monotone_knob,
)


# ------------------------------------------------------------------------------ plateau
def test_plateau_stopper_hand_computed_sequence() -> None:
    stopper = PlateauStopper(patience=2, min_rel_delta=0.01)
    losses = [1.0, 0.8, 0.795, 0.79, 0.7, 0.71, 0.7, 0.69]
    stops = [stopper.update(100 * i, x) for i, x in enumerate(losses[:7])]
    # 1.0 first (best); 0.8 < 0.99 improves; 0.795 is not < 0.8·0.99 = 0.792 (1 bad);
    # 0.79 < 0.792 improves; 0.7 < 0.7821 improves; 0.71 (1 bad); 0.7 is not < 0.693 (2 bad)
    assert stops == [False] * 6 + [True]
    assert stopper.best_step == 400 and stopper.best_loss == 0.7
    assert stopper.bad_evals == 2 and stopper.stopped
    assert stopper.to_dict()["history"][3] == [300, 0.79]


def test_plateau_stopper_rejects_bad_settings_and_nan() -> None:
    with pytest.raises(ValueError, match="patience"):
        PlateauStopper(patience=0)
    with pytest.raises(ValueError, match="min_rel_delta"):
        PlateauStopper(min_rel_delta=1.0)
    with pytest.raises(ValueError, match="NaN at step 7"):
        PlateauStopper().update(7, float("nan"))


# ------------------------------------------------------------------------------ band tuner
def _fake(successes: dict[int, int], episodes: int = 20):
    calls: list[int] = []

    def estimate(n: int) -> tuple[int, int]:
        calls.append(n)
        return successes[n], episodes

    return estimate, calls


def test_tuner_stops_at_the_first_probe_in_the_band() -> None:
    est, calls = _fake({2: 0, 4: 2, 8: 6, 16: 14, 32: 18})
    res = tune_monotone_knob([2, 4, 8, 16, 32], est, (0.15, 0.50))
    # middle candidate (index 2) = 8: 6/20 = 0.30 is inside [0.15, 0.50]
    assert calls == [8] and res.value == 8 and res.in_band


def test_tuner_bisects_towards_the_band() -> None:
    est, calls = _fake({2: 0, 4: 1, 8: 5, 16: 14, 32: 18, 64: 20})
    res = tune_monotone_knob([2, 4, 8, 16, 32, 64], est, (0.15, 0.50))
    # mid (0+5)//2 = 2 -> 8: 5/20 = 0.25 in the band at once
    assert calls == [8] and res.value == 8
    est, calls = _fake({2: 0, 4: 2, 8: 13, 16: 14, 32: 18, 64: 20})
    res = tune_monotone_knob([2, 4, 8, 16, 32, 64], est, (0.15, 0.50))
    # 8: 0.65 above -> [0, 1], mid 0 -> 2: 0.0 below -> [1, 1] -> 4: 0.10 below -> empty.
    # distances to the band: 8 -> 0.15, 2 -> 0.15, 4 -> 0.05: the closest, 4, not in the band
    assert calls == [8, 2, 4]
    assert res.value == 4 and not res.in_band
    assert [p.rate for p in res.probes] == [0.65, 0.0, 0.1]


def test_tuner_refines_between_integer_candidates_that_straddle_the_band() -> None:
    # 8 demos -> 4/30 (13 %), 12 -> 16/30 (53 %): no candidate in the band, 10 is.
    table = {2: 0, 4: 1, 8: 4, 9: 6, 10: 9, 11: 12, 12: 16, 16: 20}
    probed: list[int] = []

    def est(n: int) -> tuple[int, int]:
        probed.append(n)
        return table[n], 30

    res = tune_monotone_knob([2, 4, 8, 16], est, (0.15, 0.50), refine_integers=True)
    # bisection: 4 (3 %) -> 8 (13 %) -> 16 (67 %), closed; then the integers: 12 (53 %), 10
    assert probed == [4, 8, 16, 12, 10]
    assert res.value == 10 and res.in_band
    # without the refinement: the probe closest to the band, 8 (2 points below it)
    probed.clear()
    plain = tune_monotone_knob([2, 4, 8, 16], est, (0.15, 0.50))
    assert probed == [4, 8, 16] and plain.value == 8 and not plain.in_band
    # a gap with no integer in the band: 8 (13 %) and 9 (67 %) -> the closer, 8
    res = tune_monotone_knob([8, 9], lambda n: ({8: 4, 9: 20}[n], 30), refine_integers=True)
    assert res.value == 8 and not res.in_band and [p.value for p in res.probes] == [8, 9]


def test_tuner_breaks_a_tie_towards_the_weaker_setting() -> None:
    est, calls = _fake({1: 0, 2: 1, 3: 3}, episodes=4)
    res = tune_monotone_knob([1, 2, 3], est, (0.25, 0.50))
    # 2: 0.25 in the band at once; with 2 at 0.75 instead: 2 above -> 1: 0.0 below -> empty;
    # both 0.25 from the band (exact in binary), so the weaker, 1
    assert calls == [2] and res.value == 2
    est, calls = _fake({1: 0, 2: 3, 3: 4}, episodes=4)
    res = tune_monotone_knob([1, 2, 3], est, (0.25, 0.50))
    assert calls == [2, 1] and res.value == 1 and not res.in_band


def test_tuner_goes_stronger_when_below_the_band() -> None:
    est, calls = _fake({1: 0, 2: 1, 3: 2, 4: 5, 5: 9})
    res = tune_monotone_knob([1, 2, 3, 4, 5], est, (0.15, 0.50))
    # 3: 0.10 below -> [3, 4], mid 3 -> 4: 0.25 in the band
    assert calls == [3, 4] and res.value == 4 and res.in_band
    assert res.to_dict()["probes"][1] == {"value": 4, "successes": 5, "episodes": 20}


def test_tuner_errors_and_band_distance() -> None:
    assert band_distance(0.3, (0.15, 0.5)) == 0.0
    assert band_distance(0.05, (0.15, 0.5)) == pytest.approx(0.10)
    assert band_distance(0.75, (0.15, 0.5)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="at least one candidate"):
        tune_monotone_knob([], lambda n: (0, 1))
    with pytest.raises(ValueError, match="band"):
        tune_monotone_knob([1], lambda n: (0, 1), (0.6, 0.5))
    with pytest.raises(ValueError, match=r"estimate\(3\) returned \(5, 4\)"):
        tune_monotone_knob([3], lambda n: (5, 4))


# ------------------------------------------------------------------------------ paired stats
def test_paired_difference_hand_computed() -> None:
    a = [[1, 1, 0, 1], [0, 0]]
    b = [[0, 1, 0, 0], [1, 0]]
    # seed 0: (1 + 0 + 0 + 1) / 4 = 0.5; seed 1: (−1 + 0) / 2 = −0.5; mean 0.0
    assert paired_difference(a, b) == 0.0
    assert paired_difference([[1, 0, 1]], [[0, 0, 0]]) == pytest.approx(2 / 3)


def test_paired_bootstrap_over_seeds_hand_computed() -> None:
    # per-seed mean differences 0.2 and 0.6; resampling 2 seeds gives 0.2 (p 1/4), 0.4 (1/2),
    # 0.6 (1/4), so the 2.5 % and 97.5 % quantiles are 0.2 and 0.6 exactly.
    a = [[1, 0, 0, 0, 0], [1, 1, 1, 0, 0]]
    b = [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    iv = paired_bootstrap(a, b, n_boot=4000, seed=1, resample_poses=False)
    assert iv.mean == pytest.approx(0.4)
    assert (iv.lo, iv.hi) == (pytest.approx(0.2), pytest.approx(0.6))
    assert iv.seeds == 2 and iv.poses == 10 and iv.excludes_zero
    assert iv.format() == "+40 [+20, +60]"


def test_paired_bootstrap_over_poses_hand_computed() -> None:
    # one seed, pose differences (1, 0): a resample's mean is 0 (1/4), 0.5 (1/2), 1 (1/4)
    iv = paired_bootstrap([[1, 1]], [[0, 1]], n_boot=4000, seed=2)
    assert iv.mean == 0.5 and (iv.lo, iv.hi) == (0.0, 1.0) and not iv.excludes_zero


def test_pairing_cancels_the_pose_difficulty() -> None:
    # Both methods solve exactly the same poses: every paired difference is 0, so the
    # interval is the point [0, 0] however much the success varies across poses and seeds.
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 2, 100).tolist() for _ in range(5)]
    iv = paired_bootstrap(a, a, n_boot=500)
    assert (iv.mean, iv.lo, iv.hi) == (0.0, 0.0, 0.0)
    # A constant +1 on every pose: [1, 1].
    ones = [[1] * 10] * 3
    zeros = [[0] * 10] * 3
    iv = paired_bootstrap(ones, zeros, n_boot=200)
    assert (iv.mean, iv.lo, iv.hi) == (1.0, 1.0, 1.0)


def test_paired_bootstrap_is_reproducible_and_checks_shapes() -> None:
    rng = np.random.default_rng(3)
    a = [rng.integers(0, 2, 50) for _ in range(5)]
    b = [rng.integers(0, 2, 50) for _ in range(5)]
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    iv = paired_bootstrap(a, b, seed=7)
    assert iv.lo <= iv.mean <= iv.hi
    with pytest.raises(ValueError, match="seed 1: a has 50 poses, b has 49"):
        paired_bootstrap(a, [b[0], b[1][:49], *b[2:]])
    with pytest.raises(ValueError, match="a has 5 seeds, b has 4"):
        paired_bootstrap(a, b[:4])
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap(a, b, n_boot=0)


# ------------------------------------------------------------------------------ SFT plateau
def _sft_trainer(tmp_path):
    from habc_learner.core.episode import scenario_episode
    from habc_learner.core.replay import ReplayStore
    from habc_learner.core.trainer import Trainer, TrainerConfig
    from habc_policy.core.configuration_flow import FlowPolicyConfig

    policy = FlowPolicyConfig(proprio_dim=15, feature_dim=32, hidden_dim=32, num_blocks=1)
    cfg = TrainerConfig(method="sft", policy=policy, batch_size=16, progress=False, seed=0)
    train, val = ReplayStore(cfg.replay_config()), ReplayStore(cfg.replay_config())
    for i in range(3):
        train.add_episode(scenario_episode("demo", seed=i, length=60))
    val.add_episode(scenario_episode("demo", seed=10, length=60))
    return Trainer(cfg, train), val


def test_train_to_plateau_keeps_the_best_weights(tmp_path) -> None:
    from habc_learner.core.sft_convergence import HeldOutFlowLoss, train_to_plateau

    torch.set_num_threads(1)
    trainer, val = _sft_trainer(tmp_path)
    heldout = HeldOutFlowLoss(trainer, val, seed=0)
    start = heldout()
    assert heldout() == start  # fixed ε and τ: the same weights give the same loss
    info = train_to_plateau(
        trainer, heldout, max_steps=60, validate_every=10, stopper=PlateauStopper(2, 0.0)
    )
    steps = [s for s, _ in info["history"]]
    assert steps[0] == 0 and all(b - a == 10 for a, b in itertools.pairwise(steps))
    assert info["steps_run"] == steps[-1] <= 60
    # the trainer holds the best evaluation's weights, labelled with its step
    assert trainer.learner_step == info["best_step"]
    assert heldout() == pytest.approx(info["best_loss"], rel=1e-6)
    assert info["best_loss"] == min(x for _, x in info["history"]) < start
    # stopped by the plateau (2 evaluations without improvement) or by the step cap
    assert info["plateau"] == (info["bad_evals"] == 2)
    assert info["plateau"] or info["steps_run"] == 60


def test_train_to_plateau_stops_after_patience_and_restores_the_start(tmp_path) -> None:
    from habc_learner.core.sft_convergence import HeldOutFlowLoss, train_to_plateau

    torch.set_num_threads(1)
    trainer, val = _sft_trainer(tmp_path)
    heldout = HeldOutFlowLoss(trainer, val, seed=0)
    start = heldout()
    # An improvement must be 99 % lower: none is, so the first evaluation (10 steps) stops
    # training and the untrained weights (step 0) come back.
    info = train_to_plateau(
        trainer, heldout, max_steps=100, validate_every=10, stopper=PlateauStopper(1, 0.99)
    )
    assert info["steps_run"] == 10 and info["plateau"] and info["best_step"] == 0
    assert trainer.learner_step == 0 and heldout() == pytest.approx(start, rel=1e-6)


def test_heldout_loss_over_chosen_rows(tmp_path) -> None:
    from habc_learner.core.sft_convergence import HeldOutFlowLoss

    torch.set_num_threads(1)
    trainer, val = _sft_trainer(tmp_path)
    rows = np.arange(5)
    sub = HeldOutFlowLoss(trainer, val, seed=0, rows=rows)
    assert sub.windows == 5 and np.isfinite(sub())
    with pytest.raises(ValueError, match="no windows"):
        HeldOutFlowLoss(trainer, val, rows=np.arange(0))
