"""Trainer: a short round for every method, resume, warmup, IR schedule, logging."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from habc_learner.core.critic import CriticConfig
from habc_learner.core.episode import SCENARIOS, scenario_episode
from habc_learner.core.methods import METHODS
from habc_learner.core.replay import ReplayStore
from habc_learner.core.trainer import Trainer, TrainerConfig
from habc_policy.core import checkpoint as ckpt
from habc_policy.core.configuration_flow import FlowPolicyConfig


def make_store(config: TrainerConfig, length: int = 80, per_scenario: int = 2) -> ReplayStore:
    store = ReplayStore(config.replay_config())
    seed = 0
    for scenario in SCENARIOS:
        for _ in range(per_scenario):
            store.add_episode(
                scenario_episode(
                    scenario,
                    seed=seed,
                    length=length,
                    cameras=config.policy.camera_names,
                    image_size=config.policy.image_size,
                )
            )
            seed += 1
    return store


def make_config(
    tmp_path: Path, policy: FlowPolicyConfig, critic: CriticConfig, method, **kw
) -> TrainerConfig:
    base = dict(
        method=method,
        policy=policy,
        critic=critic,
        batch_size=32,
        steps_per_round=4,
        progress=False,
        checkpoint_dir=str(tmp_path / "ckpt"),
        log_dir=str(tmp_path / "tb"),
        recap_threshold_every=2,
    )
    return TrainerConfig(**{**base, **kw})


def _model_tensors(path: Path) -> dict[str, torch.Tensor]:
    _, tensors, _ = ckpt.read_checkpoint(path)
    return tensors[ckpt.MODEL_FILE]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_short_round_for_every_method_changes_the_checkpoint(
    tmp_path, tiny_policy_config, tiny_critic_config, method
) -> None:
    config = make_config(tmp_path, tiny_policy_config, tiny_critic_config, method)
    store = make_store(config)
    with Trainer(config, store) as trainer:
        trainer.ensure_normalizer()
        first = trainer.save_checkpoint()
        summary = trainer.run_round()
    assert summary.learner_step == 4 and summary.checkpoint is not None
    assert summary.checkpoint_id != ckpt.read_manifest(first)["checkpoint_id"]
    before, after = _model_tensors(first), _model_tensors(summary.checkpoint)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert ckpt.latest_checkpoint(config.checkpoint_dir) == summary.checkpoint
    loaded = ckpt.load_policy(summary.checkpoint)
    assert loaded.sample_actions(torch.zeros(15).numpy(), "reach the goal", seed=0).shape == (
        50,
        14,
    )
    assert summary.means["loss/actor"] > 0
    assert 0.0 < summary.means["weights/frac_valid"] <= 1.0
    if METHODS[method].uses_dual_critic:
        assert "loss/viability_bce" in summary.means and "critic/p_v_brier" in summary.means
    if method == "imit_recap":
        assert 0.0 <= summary.means["recap/pass_rate"] <= 1.0
        assert summary.means["recap/heldout_pass_rate"] == pytest.approx(0.25, abs=0.05)


@pytest.mark.parametrize("method", ["habc_ir", "imit_recap"])
def test_resume_continues_the_same_run(
    tmp_path, tiny_policy_config, tiny_critic_config, method
) -> None:
    method_cfg = METHODS[method].replace(ir_from_round=1, warmup_steps=2)
    straight_cfg = make_config(
        tmp_path / "a", tiny_policy_config, tiny_critic_config, method_cfg, steps_per_round=3
    )
    with Trainer(straight_cfg, make_store(straight_cfg)) as straight:
        straight.run_round()
        straight.run_round()
    split_cfg = make_config(
        tmp_path / "b", tiny_policy_config, tiny_critic_config, method_cfg, steps_per_round=3
    )
    with Trainer(split_cfg, make_store(split_cfg)) as first:
        first.run_round()
    with Trainer.resume(split_cfg, make_store(split_cfg)) as resumed:
        assert resumed.learner_step == 3 and resumed.round_index == 1
        summary = resumed.run_round()
        assert summary.learner_step == 6
        assert resumed.ir_active == (method == "habc_ir")
        for (name, a), b in zip(
            straight.policy.state_dict().items(), resumed.policy.state_dict().values()
        ):
            assert torch.equal(a, b), name
        modules = [(straight.critic, resumed.critic), (straight.parent, resumed.parent)]
        for m_a, m_b in modules:
            if m_a is not None:
                for a, b in zip(m_a.state_dict().values(), m_b.state_dict().values()):
                    assert torch.equal(a, b)
        state_a = straight.actor_optimizer.state_dict()["state"]
        state_b = resumed.actor_optimizer.state_dict()["state"]
        assert sorted(state_a) == sorted(state_b)
        for pid, entry in state_a.items():
            assert torch.equal(entry["exp_avg"], state_b[pid]["exp_avg"])
            assert torch.equal(entry["step"], state_b[pid]["step"])


def test_resume_rejects_other_method(tmp_path, tiny_policy_config, tiny_critic_config) -> None:
    cfg = make_config(tmp_path, tiny_policy_config, tiny_critic_config, "habc")
    with Trainer(cfg, make_store(cfg)) as trainer:
        path = trainer.run_round().checkpoint
    other = make_config(tmp_path, tiny_policy_config, tiny_critic_config, "habc_v")
    with pytest.raises(ckpt.CheckpointError, match="method 'habc'"):
        Trainer.resume(other, make_store(other), path)


def test_warmup_uniform_then_gate_and_ir_from_round(
    tmp_path, tiny_policy_config, tiny_critic_config
) -> None:
    method = METHODS["habc_ir"].replace(warmup_steps=3, ir_from_round=1)
    cfg = make_config(
        tmp_path,
        tiny_policy_config,
        tiny_critic_config,
        method,
        steps_per_round=3,
        checkpoint_dir=None,
    )
    with Trainer(cfg, make_store(cfg)) as trainer:
        warm = [trainer.train_step() for _ in range(3)]
        assert all(i["weights/mean_g_success_autonomous"] == 1.0 for i in warm)
        assert all(i["weights/warmup"] == 1.0 and i["weights/ir_active"] == 0.0 for i in warm)
        after = trainer.train_step()
        assert after["weights/warmup"] == 0.0 and after["weights/mean_g_success_autonomous"] != 1.0
        assert not trainer.ir_active
        trainer.round_index = 1
        assert trainer.train_step()["weights/ir_active"] == 1.0


def test_tensorboard_receives_every_term(tmp_path, tiny_policy_config, tiny_critic_config) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(tmp_path, tiny_policy_config, tiny_critic_config, "habc")
    with Trainer(cfg, make_store(cfg)) as trainer:
        trainer.run_round()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "loss/actor",
        "loss/critic",
        "loss/viability_bce",
        "loss/efficiency_huber",
        "weights/mean_g_success_autonomous",
        "weights/mean_g_intervention",
        "weights/frac_valid",
        "critic/p_v_brier",
    ):
        assert tag in tags, tag
    assert len(acc.Scalars("loss/actor")) == 4


def test_options_run(tmp_path, tiny_policy_config, tiny_critic_config) -> None:
    critic = dataclasses.replace(tiny_critic_config, features="own", efficiency_target="mc")
    policy = dataclasses.replace(
        tiny_policy_config,
        camera_names=("top", "wrist"),
        image_size=(24, 24),
        cnn_channels=(4, 8),
        time_schedule="beta",
        parametrization="velocity",
    )
    cfg = make_config(tmp_path, policy, critic, "habc", checkpoint_dir=None, log_dir=None)
    with Trainer(cfg, make_store(cfg, per_scenario=1)) as trainer:
        summary = trainer.run_round(2)
    assert summary.learner_step == 2 and trainer.critic_encoder is not None


def test_init_policy_from_checkpoint(tmp_path, tiny_policy_config, tiny_critic_config) -> None:
    sft = make_config(tmp_path / "sft", tiny_policy_config, tiny_critic_config, "sft")
    with Trainer(sft, make_store(sft)) as trainer:
        path = trainer.run_round().checkpoint
    habc = make_config(tmp_path / "habc", tiny_policy_config, tiny_critic_config, "habc")
    with Trainer(habc, make_store(habc)) as trainer:
        trainer.init_policy_from(path)
        assert trainer.learner_step == 4 and trainer.run_start_step == 4
        info = trainer.train_step()
        assert info["weights/warmup"] == 1.0


def test_config_validation(tmp_path, tiny_policy_config) -> None:
    with pytest.raises(ValueError, match="did you mean 'habc'"):
        TrainerConfig(method="habcc", policy=tiny_policy_config)
    with pytest.raises(ValueError, match="device 'tpu'"):
        TrainerConfig(policy=tiny_policy_config, device="tpu")
    with pytest.raises(ValueError, match=r"window\.horizon=50 must equal policy\.horizon=10"):
        TrainerConfig(policy=dataclasses.replace(tiny_policy_config, horizon=10))
    recap = TrainerConfig(method="imit_recap", policy=tiny_policy_config)
    assert recap.window.labeling == "naive"
    aware_store = ReplayStore(
        TrainerConfig(method="habc", policy=tiny_policy_config).replay_config()
    )
    with pytest.raises(ValueError, match="'naive' labeling"):
        Trainer(recap, aware_store)


def test_a_method_whose_source_is_empty_says_so() -> None:
    from habc_learner.core.methods import get_method
    from habc_learner.core.trainer import missing_sources

    dagger = get_method("imit_dagger")
    counts = {"demo": 500, "intervention": 0, "rollout_success": 40}
    (note,) = missing_sources(dagger, counts)
    assert note == ("imit_dagger: no intervention windows in the store, so it trains on demo only")
    assert missing_sources(dagger, {**counts, "intervention": 3}) == []
    assert missing_sources(get_method("sft"), counts) == []
