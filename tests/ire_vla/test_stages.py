"""The two iRe-VLA stages through the Trainer: what each trains, what each samples, resume."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from habc_learner.core.episode import Outcome
from habc_learner.core.ire_vla import IRE_VLA_FILE
from habc_learner.core.labeling import Source
from habc_learner.core.replay import ReplayStore
from habc_learner.core.trainer import Trainer
from habc_policy.core import checkpoint as ckpt

from .helpers import ire_method, make_config, make_store


def _clone(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> list[str]:
    return [k for k, v in module.state_dict().items() if not torch.equal(before[k], v)]


def _spy_rows(monkeypatch: pytest.MonkeyPatch, store: ReplayStore) -> list[np.ndarray]:
    """Record the table rows of every batch the store materializes."""
    calls: list[np.ndarray] = []
    gather = store.gather

    def spy(rows, *args, **kwargs):
        calls.append(np.asarray(rows).copy())
        return gather(rows, *args, **kwargs)

    monkeypatch.setattr(store, "gather", spy)
    return calls


@pytest.mark.parametrize("cameras", [(), ("top", "wrist")])
def test_rl_stage_leaves_the_backbone_bit_identical(
    tmp_path, tiny_policy_config, tiny_critic_config, cameras
) -> None:
    policy = dataclasses.replace(
        tiny_policy_config, camera_names=cameras, image_size=(24, 24), cnn_channels=(4, 8)
    )
    config = make_config(tmp_path, policy, tiny_critic_config, steps_per_round=4)
    with Trainer(config, make_store(config, per_scenario=1)) as trainer:
        assert trainer.stages is not None
        head_ids = {id(p) for g in trainer.stages.head_optimizer.param_groups for p in g["params"]}
        assert head_ids == {id(p) for p in trainer.policy.head_parameters()}
        normalizer = trainer.ensure_normalizer().state_dict()
        # RL round 0 from the initial model, then RL round 2 after an SL round (which leaves
        # gradients and Adam moments on the backbone behind).
        for round_index in (0, 1, 2):
            stage = trainer.stages.stage
            assert stage == ("sl" if round_index == 1 else "rl")
            backbone = _clone(trainer.policy.encoder)
            head = _clone(trainer.policy.expert)
            value = _clone(trainer.stages.value)
            summary = trainer.run_round()
            if stage == "sl":
                assert _changed(backbone, trainer.policy.encoder)
                continue
            # Every backbone tensor, bit for bit (CNN, camera embedding, proprio MLP, prompt,
            # fuse) ...
            assert len(backbone) == len(trainer.policy.encoder.state_dict())
            for name, tensor in trainer.policy.encoder.state_dict().items():
                assert torch.equal(backbone[name], tensor), (round_index, name)
            if cameras:
                assert any(k.startswith("image_encoder.") for k in backbone)
            # ... while the action head and the value head did train.
            assert _changed(head, trainer.policy.expert)
            assert _changed(value, trainer.stages.value)
            for name, tensor in trainer.ensure_normalizer().state_dict().items():
                assert torch.equal(normalizer[name], tensor), name
            assert summary.means["ire_vla/stage_rl"] == 1.0
            assert summary.means["rl/skipped"] == 0.0
            assert summary.means["rl/log_ratio_scale"] == policy.action_dim  # κ = d by default
            for key in ("loss/ppo_clip", "loss/value", "loss/actor", "rl/ratio_mean"):
                assert key in summary.means, key


def test_each_stage_samples_only_its_data(
    tmp_path, tiny_policy_config, tiny_critic_config, monkeypatch
) -> None:
    config = make_config(tmp_path, tiny_policy_config, tiny_critic_config, steps_per_round=6)
    store = make_store(config, length=120)
    counts = store.source_counts()
    # The store holds every kind of window the SL stage must never see.
    assert counts["rollout_failure"] and counts["unlabeled"] and counts["intervention"]
    episodes = store.episodes
    with Trainer(config, store) as trainer:
        rows = _spy_rows(monkeypatch, store)
        assert trainer.run_round().means["ire_vla/stage_rl"] == 1.0
        rl_rows = np.concatenate(rows)
        rows.clear()
        backbone = _clone(trainer.policy.encoder)
        head = _clone(trainer.policy.expert)
        assert trainer.run_round().means["ire_vla/stage_rl"] == 0.0
        sl_rows = np.concatenate(rows)
        # SL unfreezes the whole model.
        assert _changed(backbone, trainer.policy.encoder)
        assert _changed(head, trainer.policy.expert)
    table = store.table
    assert len(sl_rows) == 6 * config.batch_size
    sl_src = table.source[sl_rows]
    assert set(np.unique(sl_src)) == {Source.DEMO, Source.ROLLOUT_SUCCESS}
    for e in table.episode_index[sl_rows]:
        assert episodes[e].outcome is Outcome.SUCCESS, episodes[e].episode_id
    assert table.episode_success[sl_rows].all()
    rl_src = table.source[rl_rows]
    assert not np.isin(rl_src, [Source.DEMO, Source.INTERVENTION]).any()
    assert {Source.ROLLOUT_SUCCESS, Source.ROLLOUT_FAILURE} <= set(np.unique(rl_src))


def test_both_stages_change_the_policy_and_checkpoint(
    tmp_path, tiny_policy_config, tiny_critic_config
) -> None:
    config = make_config(tmp_path, tiny_policy_config, tiny_critic_config)
    with Trainer(config, make_store(config)) as trainer:
        trainer.ensure_normalizer()
        first = trainer.save_checkpoint()
        rl = trainer.run_round()
        sl = trainer.run_round()
    assert rl.checkpoint is not None and sl.checkpoint is not None
    assert [rl.means["ire_vla/stage_rl"], sl.means["ire_vla/stage_rl"]] == [1.0, 0.0]
    assert len({first.name, rl.checkpoint.name, sl.checkpoint.name}) == 3
    models = [
        ckpt.read_checkpoint(p)[1][ckpt.MODEL_FILE] for p in (first, rl.checkpoint, sl.checkpoint)
    ]
    for before, after in itertools.pairwise(models):
        assert any(not torch.equal(before[k], after[k]) for k in before)
    # Safetensors and JSON only; the iRe-VLA state rides along.
    files = {p.name for p in sl.checkpoint.iterdir()}
    assert IRE_VLA_FILE in files
    assert all(name.endswith((".safetensors", ".json")) for name in files), files
    manifest = ckpt.read_manifest(sl.checkpoint)
    assert manifest["method"] == "ire_vla" and manifest["round_index"] == 2
    loaded = ckpt.load_policy(sl.checkpoint)
    assert loaded.sample_actions(np.zeros(15, np.float32), "reach the goal", seed=0).shape == (
        50,
        14,
    )


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    assert trainer.stages is not None
    out = {f"policy.{k}": v for k, v in trainer.policy.state_dict().items()}
    out.update({f"value.{k}": v for k, v in trainer.stages.value.state_dict().items()})
    optimizers = {"actor": trainer.actor_optimizer, **trainer.stages.optimizers()}
    for name, optimizer in optimizers.items():
        for pid, entry in optimizer.state_dict()["state"].items():
            for key, value in entry.items():
                out[f"{name}.{pid}.{key}"] = value
    return out


def _assert_same_run(a: Trainer, b: Trainer) -> None:
    assert (a.learner_step, a.round_index) == (b.learner_step, b.round_index)
    sa, sb = _state(a), _state(b)
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_resume_continues_the_stage_schedule(
    tmp_path, tiny_policy_config, tiny_critic_config
) -> None:
    method = ire_method(rl_rounds_per_cycle=2, sl_rounds_per_cycle=1)
    straight_cfg = make_config(
        tmp_path / "a", tiny_policy_config, tiny_critic_config, method, steps_per_round=2
    )
    with Trainer(straight_cfg, make_store(straight_cfg, per_scenario=1)) as straight:
        stages = [straight.run_round().means["ire_vla/stage_rl"] for _ in range(4)]
    assert stages == [1.0, 1.0, 0.0, 1.0]

    split_cfg = make_config(
        tmp_path / "b", tiny_policy_config, tiny_critic_config, method, steps_per_round=2
    )
    with Trainer(split_cfg, make_store(split_cfg, per_scenario=1)) as first:
        first.run_round()
        first.run_round()
    with Trainer.resume(split_cfg, make_store(split_cfg, per_scenario=1)) as resumed:
        assert resumed.stages is not None
        assert resumed.round_index == 2 and resumed.stages.stage == "sl"
        rest = [resumed.run_round().means["ire_vla/stage_rl"] for _ in range(2)]
        assert rest == [0.0, 1.0]
        _assert_same_run(straight, resumed)


@pytest.mark.parametrize("warmup", [0, 3])
def test_resume_in_the_middle_of_an_rl_round_keeps_its_snapshot(
    tmp_path, tiny_policy_config, tiny_critic_config, warmup
) -> None:
    """The PPO ratio's old head (the head at the round start: warmup 0, the head moves before
    the checkpoint) and the round's value warmup (3: it spans the checkpoint) survive a resume."""
    method = ire_method(rl_rounds_per_cycle=2, rl_value_warmup_steps=warmup)
    cfg = {"policy": tiny_policy_config, "critic": tiny_critic_config, "method": method}
    straight_cfg = make_config(tmp_path / "a", **cfg)
    with Trainer(straight_cfg, make_store(straight_cfg, per_scenario=1)) as straight:
        straight.run_round(2)
        straight.run_round(4)
    split_cfg = make_config(tmp_path / "b", **cfg)
    with Trainer(split_cfg, make_store(split_cfg, per_scenario=1)) as first:
        first.run_round(2)
        assert first.train_step()["rl/value_warmup"] == float(warmup > 0)
        first.train_step()
        path = first.save_checkpoint()
    with Trainer.resume(split_cfg, make_store(split_cfg, per_scenario=1), path) as resumed:
        assert resumed.stages is not None and resumed.stages.old_head is not None
        assert (resumed.learner_step, resumed.round_index) == (4, 1)
        assert resumed.stages.round_start_step == 2
        resumed.run_round(2)
        _assert_same_run(straight, resumed)


def test_rl_without_rollouts_only_advances_the_clock(
    tmp_path, tiny_policy_config, tiny_critic_config
) -> None:
    config = make_config(tmp_path, tiny_policy_config, tiny_critic_config, checkpoint_dir=None)
    with Trainer(config, make_store(config, scenarios=("demo",))) as trainer:
        trainer.ensure_normalizer()
        before = _clone(trainer.policy)
        rl = trainer.run_round()
        assert rl.means["rl/skipped"] == 1.0 and trainer.learner_step == 3
        assert not _changed(before, trainer.policy)
        sl = trainer.run_round()
        assert sl.means["ire_vla/stage_rl"] == 0.0 and _changed(before, trainer.policy)


def test_sl_freeze_backbone_ablation(tmp_path, tiny_policy_config, tiny_critic_config) -> None:
    method = ire_method(rl_rounds_per_cycle=0, sl_freeze_backbone=True)
    config = make_config(tmp_path, tiny_policy_config, tiny_critic_config, method)
    with Trainer(config, make_store(config, per_scenario=1)) as trainer:
        assert trainer.stages is not None and trainer.stages.stage == "sl"
        backbone, head = _clone(trainer.policy.encoder), _clone(trainer.policy.expert)
        trainer.run_round()
        assert not _changed(backbone, trainer.policy.encoder)
        assert _changed(head, trainer.policy.expert)


def test_tensorboard_receives_every_term(tmp_path, tiny_policy_config, tiny_critic_config) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_config(
        tmp_path, tiny_policy_config, tiny_critic_config, log_dir=str(tmp_path / "tb")
    )
    with Trainer(config, make_store(config, per_scenario=1)) as trainer:
        trainer.run_round()
        trainer.run_round()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "ire_vla/stage_rl",
        "loss/ppo_clip",
        "loss/value",
        "loss/actor",
        "rl/ratio_mean",
        "rl/clip_frac",
        "rl/approx_kl",
        "rl/explained_variance",
        "rl/return_mean",
        "grad_norm/head",
        "grad_norm/value",
        "grad_norm/actor",
        "batch/frac_demo",
    ):
        assert tag in tags, tag
    assert len(acc.Scalars("ire_vla/stage_rl")) == 6
    assert len(acc.Scalars("loss/ppo_clip")) == 3


def test_init_from_an_sft_checkpoint(tmp_path: Path, tiny_policy_config, tiny_critic_config):
    """The main job's path: SFT checkpoint -> ire_vla trainer -> rounds up to a step target."""
    sft_cfg = make_config(tmp_path / "sft", tiny_policy_config, tiny_critic_config, "sft")
    with Trainer(sft_cfg, make_store(sft_cfg, scenarios=("demo",))) as sft:
        path = sft.run_round().checkpoint
    assert path is not None
    config = make_config(tmp_path / "ire", tiny_policy_config, tiny_critic_config)
    store = make_store(config, per_scenario=1, learner_step=3)
    with Trainer.resume(config, store) as trainer:
        trainer.init_policy_from(path)
        summary = trainer.run_round(3)
    assert summary.learner_step == 6 and summary.means["rl/policy_lag"] == 0.0
    with Trainer.resume(config, store) as trainer:
        assert trainer.stages is not None and trainer.stages.stage == "sl"
        assert trainer.run_round(2).learner_step == 8
