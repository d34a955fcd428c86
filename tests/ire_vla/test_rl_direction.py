"""The RL stage moves the action head toward what succeeded, the SL stage toward successes only.

A two-mode toy: from one observation, successful rollouts act +0.5 on every action dimension,
failed ones −0.5. A policy fit to both modes samples each about half of the time; RL (sparse
success reward, PPO-clip with the FPO ratio) must shift the samples to the successful mode.
"""

from __future__ import annotations

import numpy as np
import torch

from habc_learner.core.critic import CriticConfig
from habc_learner.core.episode import Episode, Outcome
from habc_learner.core.labeling import Source
from habc_learner.core.replay import ReplayStore
from habc_learner.core.trainer import Trainer, TrainerConfig
from habc_learner.core.windows import WindowConfig
from habc_policy.core.configuration_flow import FlowPolicyConfig

H, D, T = 4, 2, 20
POLICY = FlowPolicyConfig(
    horizon=H,
    action_dim=D,
    proprio_dim=2,
    feature_dim=32,
    hidden_dim=64,
    num_blocks=2,
    time_embed_dim=16,
    prompt_dim=8,
    prompt_buckets=64,
)
WINDOW = WindowConfig(horizon=H, min_human_steps=2)


def _episode(i: int, good: bool, demo: bool = False) -> Episode:
    rng = np.random.default_rng(i)
    sign = 1.0 if good else -1.0
    proprio = np.zeros((T, 2), np.float32)
    proprio[:, 1] = np.arange(T) / (T - 1)
    return Episode(
        episode_id=f"toy-{i}",
        task_id="toy",
        prompt="go",
        timestamps=np.arange(T) * 0.02,
        proprio=proprio,
        actions=(sign * 0.5 + 0.05 * rng.standard_normal((T, D))).astype(np.float32),
        authority=np.ones((T, 1), np.uint8),
        checkpoint_ids=np.array(["c"] * T, dtype=object),
        learner_steps=np.zeros(T, np.int64),
        outcome=Outcome.SUCCESS if good else Outcome.FAILURE,
        arm_slices=((0, D),),
        is_demonstration=demo,
    )


def _positive_fraction(trainer: Trainer) -> float:
    """Fraction of 512 sampled chunks (fixed noise) in the successful (+) mode."""
    normalizer = trainer.ensure_normalizer()
    q = normalizer.normalize_proprio(torch.zeros(512, 2))
    tokens = torch.zeros(512, POLICY.prompt_max_tokens, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    chunks = trainer.policy.sample_actions(q, tokens, generator=generator)
    return float((normalizer.unnormalize_action(chunks).mean(dim=(1, 2)) > 0).float().mean())


def _flow_loss(trainer: Trainer, store: ReplayStore, source: Source) -> float:
    rows = store.source_indices(source)
    batch = store.gather(rows, load_images=False, next_images=False)
    normalizer = trainer.ensure_normalizer()
    with torch.no_grad():
        loss, _ = trainer.policy.compute_loss(
            normalizer.normalize_proprio(batch.proprio),
            batch.prompt_tokens,
            normalizer.normalize_action(batch.actions),
            batch.action_mask,
            generator=torch.Generator().manual_seed(1),
        )
    return float(loss.mean())


def test_rl_shifts_samples_to_the_successful_mode() -> None:
    common = dict(policy=POLICY, window=WINDOW, batch_size=64, progress=False)
    sft_cfg = TrainerConfig(method="sft", actor_lr=1e-3, **common)
    demos = ReplayStore(sft_cfg.replay_config())
    demos.add_episodes(_episode(i, i % 2 == 0, demo=True) for i in range(20))
    sft = Trainer(sft_cfg, demos)
    sft.run_round(400)
    before = _positive_fraction(sft)
    assert 0.15 < before < 0.85  # both modes are sampled

    cfg = TrainerConfig(
        method="ire_vla", critic=CriticConfig(hidden_dim=32, num_layers=1), **common
    )
    store = ReplayStore(cfg.replay_config())
    store.add_episodes(_episode(100 + i, i % 2 == 0) for i in range(20))
    trainer = Trainer(cfg, store)
    trainer.policy.load_state_dict(sft.policy.state_dict())
    trainer.normalizer = sft.normalizer
    succ_before = _flow_loss(trainer, store, Source.ROLLOUT_SUCCESS)
    fail_before = _flow_loss(trainer, store, Source.ROLLOUT_FAILURE)
    summary = trainer.run_round(300)
    assert summary.means["ire_vla/stage_rl"] == 1.0
    after = _positive_fraction(trainer)
    assert after > before + 0.15, (before, after)
    # Successful chunks got likelier (lower flow loss), failed ones less likely.
    assert _flow_loss(trainer, store, Source.ROLLOUT_SUCCESS) < succ_before
    assert _flow_loss(trainer, store, Source.ROLLOUT_FAILURE) > fail_before
