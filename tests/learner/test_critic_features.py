"""Critic features (actor_detached / frozen_sft / own), held-out validation episodes, early
stopping, the viability ensemble and dropout, and the calibration figures."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from habc_learner.core import calibration as cal
from habc_learner.core import critic as C
from habc_learner.core.critic import CriticConfig, DualHeadCritic
from habc_learner.core.episode import scenario_episode
from habc_learner.core.replay import ReplayStore, is_heldout_episode
from habc_learner.core.trainer import Trainer, TrainerConfig
from habc_policy.core import checkpoint as ckpt


def _config(tmp_path, policy, critic, **kw) -> TrainerConfig:
    base = dict(
        method="habc",
        policy=policy,
        critic=critic,
        batch_size=32,
        steps_per_round=3,
        progress=False,
        checkpoint_dir=str(tmp_path / "ckpt"),
        log_dir=None,
    )
    return TrainerConfig(**{**base, **kw})


def _ids(heldout: bool, fraction: float, n: int, prefix: str) -> list[str]:
    """``n`` episode ids that the stable hash puts in (or out of) the held-out fraction."""
    out, i = [], 0
    while len(out) < n:
        eid = f"{prefix}-{i}"
        if is_heldout_episode(eid, fraction) == heldout:
            out.append(eid)
        i += 1
    return out


def _store(config: TrainerConfig, length: int = 60) -> ReplayStore:
    store = ReplayStore(config.replay_config())
    for seed, scenario in enumerate(
        ("demo", "autonomous_success", "autonomous_failure", "takeover_success")
    ):
        store.add_episode(scenario_episode(scenario, seed=seed, length=length))
    return store


def _encoder_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ configuration
def test_features_names_and_aliases() -> None:
    default = CriticConfig()
    assert default.features == "own" and default.early_stopping_patience == 3
    assert default.validation_fraction == 0.2
    assert CriticConfig(features="actor_encoder").features == "actor_detached"
    assert CriticConfig(features="separate_encoder").features == "own"
    with pytest.raises(ValueError, match=r"features=.backbone.*frozen_sft"):
        CriticConfig(features="backbone")
    for bad in (
        {"dropout": 1.0},
        {"ensemble": 0},
        {"validation_fraction": 1.0},
        {"early_stopping_patience": -1},
        {"weight_decay": -0.1},
        {"early_stopping_patience": 2, "validation_fraction": 0.0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CriticConfig(**bad)


# ------------------------------------------------------------------------------ features
def test_frozen_sft_features_stay_the_sft_encoder_and_resume(
    tmp_path, tiny_policy_config, tiny_critic_config
) -> None:
    # An "SFT" checkpoint: a few steps of sft.
    sft_cfg = _config(tmp_path / "sft", tiny_policy_config, tiny_critic_config, method="sft")
    with Trainer(sft_cfg, _store(sft_cfg)) as sft:
        sft_ckpt = sft.run_round().checkpoint
    sft_encoder = _encoder_tensors(ckpt.load_policy(sft_ckpt).model.encoder)

    critic = dataclasses.replace(tiny_critic_config, features="frozen_sft", lr=1e-2)
    cfg = _config(tmp_path / "habc", tiny_policy_config, critic)
    with Trainer(cfg, _store(cfg)) as trainer:
        trainer.init_policy_from(sft_ckpt)
        assert trainer.critic_encoder is not None
        assert _equal(_encoder_tensors(trainer.critic_encoder), sft_encoder)
        opt_params = {id(p) for g in trainer.critic_optimizer.param_groups for p in g["params"]}
        assert not any(id(p) in opt_params for p in trainer.critic_encoder.parameters())
        heads_before = _encoder_tensors(trainer.critic)
        summary = trainer.run_round()
        # The actor's encoder moved, the critic's features did not, the heads trained.
        assert not _equal(_encoder_tensors(trainer.policy.encoder), sft_encoder)
        assert _equal(_encoder_tensors(trainer.critic_encoder), sft_encoder)
        assert not _equal(_encoder_tensors(trainer.critic), heads_before)
    # Resume: the frozen copy comes back from the checkpoint, not from the newer actor.
    with Trainer.resume(cfg, _store(cfg), summary.checkpoint) as resumed:
        assert _equal(_encoder_tensors(resumed.critic_encoder), sft_encoder)
        assert not _equal(_encoder_tensors(resumed.policy.encoder), sft_encoder)
        assert not resumed.critic_encoder.training


def test_own_encoder_is_trained_by_the_critic_and_actor_detached_has_none(
    tmp_path, tiny_policy_config, tiny_critic_config
) -> None:
    own = _config(
        tmp_path / "own",
        tiny_policy_config,
        dataclasses.replace(tiny_critic_config, features="own", lr=1e-2),
    )
    with Trainer(own, _store(own)) as trainer:
        before = _encoder_tensors(trainer.critic_encoder)
        summary = trainer.run_round()
        assert not _equal(_encoder_tensors(trainer.critic_encoder), before)
    with Trainer.resume(own, _store(own), summary.checkpoint) as resumed:
        assert _equal(
            _encoder_tensors(resumed.critic_encoder), _encoder_tensors(trainer.critic_encoder)
        )
    detached = _config(
        tmp_path / "det",
        tiny_policy_config,
        dataclasses.replace(tiny_critic_config, features="actor_detached"),
    )
    with Trainer(detached, _store(detached)) as trainer:
        assert trainer.critic_encoder is None


# ------------------------------------------------------------------------------ validation
def test_validation_episodes_never_train_the_critic(
    tmp_path, tiny_policy_config, tiny_critic_config
) -> None:
    frac = 0.5
    critic = dataclasses.replace(tiny_critic_config, validation_fraction=frac)
    cfg = _config(tmp_path, tiny_policy_config, critic)
    store = ReplayStore(cfg.replay_config())
    val_ids = _ids(True, frac, 2, "val")
    train_ids = _ids(False, frac, 2, "train")
    store.add_episode(scenario_episode("demo", seed=0, length=50, episode_id=val_ids[0]))
    store.add_episode(
        scenario_episode("autonomous_success", seed=1, length=50, episode_id=val_ids[1])
    )
    store.add_episode(
        scenario_episode("autonomous_failure", seed=2, length=50, episode_id=train_ids[0])
    )
    with Trainer(cfg, store) as trainer:
        table = store.table
        mask = trainer.critic_validation_mask(torch.arange(len(table))).numpy()
        # Demonstrations are never validation data, whatever their id hashes to.
        np.testing.assert_array_equal(mask, table.episode_index == 1)
        rows = trainer.critic_validation_rows()
        assert len(rows) == 50 and set(table.episode_index[rows]) == {1}
        # A batch made only of validation windows gives the critic no loss and no gradient.
        batch = store.gather(rows[:16], load_images=False)
        phi = torch.randn(16, tiny_policy_config.feature_dim)
        loss, info, _ = trainer._dual_critic_terms(batch, phi, phi)
        assert info["critic/n_lab"] == 0 and info["critic/n_succ"] == 0
        assert info["critic/frac_validation"] == 1.0
        assert float(loss.detach()) == 0.0


def test_round_reports_heldout_figures(tmp_path, tiny_policy_config, tiny_critic_config) -> None:
    frac = 0.5
    critic = dataclasses.replace(
        tiny_critic_config, validation_fraction=frac, validate_every=2, early_stopping_patience=0
    )
    cfg = _config(tmp_path, tiny_policy_config, critic, log_dir=str(tmp_path / "tb"))
    store = ReplayStore(cfg.replay_config())
    store.add_episode(scenario_episode("demo", seed=0, length=50))
    for i, eid in enumerate(_ids(True, frac, 2, "v") + _ids(False, frac, 2, "t")):
        scenario = "autonomous_success" if i % 2 == 0 else "autonomous_failure"
        store.add_episode(scenario_episode(scenario, seed=i + 1, length=50, episode_id=eid))
    with Trainer(cfg, store) as trainer:
        summary = trainer.run_round(4)
        rows = trainer.critic_validation_rows()
        p = trainer.critic_probabilities(rows)
    y = store.table.outcome_label[rows].astype(float)
    v = summary.validation
    assert v["critic_val/n"] == 100 and v["critic_val/positives"] == 50
    assert v["critic_val/auroc"] == pytest.approx(cal.auroc(p, y))
    assert v["critic_val/ece"] == pytest.approx(cal.expected_calibration_error(p, y))
    assert v["critic_val/brier"] == pytest.approx(cal.brier_score(p, y))
    assert "val_auroc=" in summary.line()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [s.step for s in acc.Scalars("critic_val/auroc")] == [2, 4]


def test_early_stopping_restores_the_best_critic(
    tmp_path, tiny_policy_config, tiny_critic_config
) -> None:
    """Validation episodes share their states with training episodes but have the opposite
    outcome: every critic step makes the held-out BCE worse, so early stopping must stop at
    once and keep the starting critic (p_v = 0.5), while without it p_v moves away."""
    frac = 0.5
    results = {}
    for patience in (0, 1):
        critic = dataclasses.replace(
            tiny_critic_config,
            validation_fraction=frac,
            validate_every=1,
            early_stopping_patience=patience,
            lr=1e-2,
        )
        cfg = _config(tmp_path / str(patience), tiny_policy_config, critic)
        store = ReplayStore(cfg.replay_config())
        store.add_episode(scenario_episode("demo", seed=9, length=50))
        for k, (t_id, v_id) in enumerate(zip(_ids(False, frac, 2, "t"), _ids(True, frac, 2, "v"))):
            store.add_episode(
                scenario_episode("autonomous_success", seed=k, length=50, episode_id=t_id)
            )
            store.add_episode(
                scenario_episode("autonomous_failure", seed=k, length=50, episode_id=v_id)
            )
        with Trainer(cfg, store) as trainer:
            summary = trainer.run_round(30)
            p = trainer.critic_probabilities(trainer.critic_validation_rows())
        results[patience] = (summary, p)
    stopped, p_stopped = results[1]
    free, p_free = results[0]
    assert stopped.validation["critic_val/stopped_at"] == 1
    assert stopped.means["critic/stopped"] > 0.9
    np.testing.assert_allclose(p_stopped, 0.5, atol=1e-6)
    assert stopped.validation["critic_val/bce"] == pytest.approx(math.log(2), abs=1e-6)
    assert free.validation["critic_val/stopped_at"] == -1
    assert p_free.mean() > 0.6 and free.validation["critic_val/bce"] > math.log(2) + 0.05


# ------------------------------------------------------------------------------ heads
def test_ensemble_logit_is_the_logit_of_the_mean_probability() -> None:
    members = torch.tensor([[math.log(0.2 / 0.8)], [math.log(0.6 / 0.4)]])
    assert C.ensemble_logit(members).item() == pytest.approx(math.log(0.4 / 0.6), abs=1e-6)
    assert C.ensemble_logit(members[:1]).item() == pytest.approx(math.log(0.25))
    # Finite for saturated members.
    assert torch.isfinite(C.ensemble_logit(torch.tensor([[80.0], [-80.0]]))).all()


def test_ensemble_loss_is_the_mean_of_member_losses() -> None:
    z = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    y = torch.tensor([1.0, 0.0])
    mask = torch.tensor([True, True])
    expected = (C.viability_loss(z[0], y, mask) + C.viability_loss(z[1], y, mask)) / 2
    assert C.viability_loss(z, y, mask).item() == pytest.approx(expected.item())
    critic = DualHeadCritic(4, CriticConfig(hidden_dim=8, num_layers=1, ensemble=3))
    members, v_e = critic.forward_members(torch.randn(5, 4))
    assert members.shape == (3, 5) and v_e.shape == (5,)


def test_dropout_is_off_for_weights(tmp_path, tiny_policy_config, tiny_critic_config) -> None:
    critic = dataclasses.replace(tiny_critic_config, dropout=0.5)
    cfg = _config(tmp_path, tiny_policy_config, critic)
    with Trainer(cfg, _store(cfg)) as trainer:
        trainer.run_round(2)
        assert not trainer.critic.training
        rows = np.arange(20)
        np.testing.assert_array_equal(
            trainer.critic_probabilities(rows), trainer.critic_probabilities(rows)
        )
        assert any(isinstance(m, torch.nn.Dropout) for m in trainer.critic.viability)


# ------------------------------------------------------------------------------ calibration
def test_calibration_figures_by_hand() -> None:
    p = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([0, 0, 1, 1])
    # Pairs (pos, neg): (0.35, 0.1) ok, (0.35, 0.4) not, (0.8, ·) ok twice -> 3/4.
    assert cal.auroc(p, y) == pytest.approx(0.75)
    assert cal.auroc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert math.isnan(cal.auroc(p, np.ones(4)))
    # Bins of width 0.1: 0.1 -> 1, 0.35 -> 3, 0.4 -> 4, 0.8 -> 8, one window each:
    # |0.1 - 0| + |0.35 - 1| + |0.4 - 0| + |0.8 - 1| = 1.35.
    assert cal.expected_calibration_error(p, y) == pytest.approx(1.35 / 4)
    # Two windows in one bin: |mean p − mean y| weighted by the bin's share.
    assert cal.expected_calibration_error(np.array([0.31, 0.39]), np.array([0, 1])) == (
        pytest.approx(abs(0.35 - 0.5))
    )
    assert cal.brier_score(p, y) == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    bce = -(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4
    assert cal.binary_cross_entropy(p, y) == pytest.approx(bce)
    summary = cal.calibration_summary(p, y)
    assert summary["bin_count"][3] == 1 and summary["bin_count"][4] == 1 and summary["n"] == 4


# ------------------------------------------------------------------------------ temperature
def test_advantage_temperature_variant_by_hand() -> None:
    from habc_learner.core import weights as W
    from habc_learner.core.labeling import Source
    from habc_learner.core.methods import WeightInputs, compute_w_tilde, get_method

    p, a_v, a_e = torch.tensor([0.25]), torch.tensor([2.0]), torch.tensor([-4.0])
    x = 0.75 * 2.0 + 0.25 * -4.0  # (1 − p)·A_v + p·A_e = 0.5
    assert W.habc_gate(p, a_v, a_e).item() == pytest.approx(1 + math.tanh(x))
    assert W.habc_gate(p, a_v, a_e, 4.0).item() == pytest.approx(1 + math.tanh(x / 4))
    assert W.habc_v_gate(p, a_v, temperature=3.0).item() == pytest.approx(1 + math.tanh(0.5))
    assert W.habc_v_gate(p, a_v, "plain", 4.0).item() == pytest.approx(1 + math.tanh(0.5))
    method = get_method("habc").replace(advantage_temperature=4.0, warmup_steps=0)
    inputs = WeightInputs(
        source=torch.tensor([int(Source.ROLLOUT_SUCCESS)]), p_v=p, a_v=a_v, a_e=a_e
    )
    _, gate = compute_w_tilde(method, inputs)
    assert gate.item() == pytest.approx(1 + math.tanh(x / 4))
    assert get_method("habc").advantage_temperature == 1.0  # the paper's Eq. 7 by default
    with pytest.raises(ValueError, match="advantage_temperature"):
        get_method("habc").replace(advantage_temperature=0.0)
