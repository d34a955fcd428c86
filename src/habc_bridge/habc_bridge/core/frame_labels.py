"""Per-frame HABC labels of recorded episodes, for export (main venv: habc's torch critic).

Frame t of an episode carries the labels of the training window anchored at t, exactly as
habc's learner forms them (:func:`~habc_learner.core.labeling.label_episode`,
:func:`~habc_learner.core.windows.episode_windows`):

- ``source``: demo / rollout_success / rollout_failure / unlabeled (pre-takeover policy
  windows, unknown outcomes) / intervention; ``outcome_label`` 0/1 or -1.
- Without a learner checkpoint: ``gate`` g ≡ 1 and ``w_tilde`` from the §3.4 weight table
  (demo 1, success 1, failure 0, unlabeled 0, intervention 1): the ``uniform`` rule.
- With a learner checkpoint of a dual-critic method (habc, habc_v, habc_ir): its critic scores
  every window on habc's encoder φ(s) (the actor's, or the critic's own): p_v = σ(z_v),
  A_v (Eq. 5), A_e (Eq. 6), g_t (Eq. 7, with the checkpoint's warmup and IR state) and w̃ (the
  weight table), by the method's own weighting rule.
- ``weight`` w: Eq. 8 over the whole export (unit mean over the frames with w̃ > 0; zeros
  stay zero), so Σ w·ℓ / Σ w over any batch is the learner's actor loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from habc_bridge.core.dataset_schema import EpisodeLabelsOut
from habc_learner.core import weights as W
from habc_learner.core.critic import CriticConfig
from habc_learner.core.episode import Episode
from habc_learner.core.labeling import LabelingConfig, Source, label_episode
from habc_learner.core.methods import WeightInputs, compute_w_tilde, method_from_dict
from habc_learner.core.replay import ReplayStore
from habc_learner.core.trainer import Trainer, TrainerConfig
from habc_learner.core.windows import WindowConfig
from habc_policy.core.checkpoint import read_manifest
from habc_policy.core.configuration_flow import FlowPolicyConfig


def table_labels(
    episodes: Sequence[Episode], bags: Sequence[str], labeling: LabelingConfig
) -> list[EpisodeLabelsOut]:
    """Labels without a critic: the source table with g ≡ 1 (the ``uniform`` rule)."""
    out = []
    for ep, bag in zip(episodes, bags, strict=True):
        labels = label_episode(ep, labeling)
        source = torch.from_numpy(labels.source.astype(np.int64))
        w_tilde = W.source_weights(source, torch.ones(ep.length), intervention_reweighting=False)
        out.append(
            EpisodeLabelsOut(
                bag=bag,
                episode_id=ep.episode_id,
                source=labels.source.astype(np.int64),
                outcome_label=labels.outcome_label.astype(np.int64),
                gate=np.ones(ep.length, np.float32),
                w_tilde=w_tilde.numpy().astype(np.float32),
                weight=np.zeros(ep.length, np.float32),
                p_v=np.full(ep.length, np.nan, np.float32),
            )
        )
    return normalize_over_export(out)


def normalize_over_export(labels: list[EpisodeLabelsOut]) -> list[EpisodeLabelsOut]:
    """Eq. 8 over every frame of the export: w = w̃ / mean_{w̃ > 0} w̃."""
    if not labels:
        return labels
    flat = torch.from_numpy(np.concatenate([e.w_tilde for e in labels]).astype(np.float32))
    w = W.normalize_weights(flat).numpy()
    out, start = [], 0
    for e in labels:
        out.append(dataclasses.replace(e, weight=w[start : start + e.length].astype(np.float32)))
        start += e.length
    return out


def trainer_config_from_manifest(manifest: dict[str, Any]) -> TrainerConfig:
    """The learner's :class:`TrainerConfig` as its checkpoint recorded it (CPU, no logging)."""
    tc = manifest.get("trainer_config")
    if not isinstance(tc, dict):
        raise ValueError("checkpoint has no trainer_config: not a learner checkpoint")
    method = tc["method"]
    method = method_from_dict(method) if isinstance(method, dict) else method
    window = {k: v for k, v in tc["window"].items() if k != "labeling"}
    return TrainerConfig(
        method=method,
        policy=FlowPolicyConfig.from_dict(manifest["policy_config"]),
        critic=CriticConfig(**tc["critic"]),
        window=WindowConfig(**window),
        seed=int(tc.get("seed", 0)),
        stale_cutoff=int(tc.get("stale_cutoff", 10000)),
        heldout_fraction=float(tc.get("heldout_fraction", 0.1)),
        device="cpu",
        progress=False,
    )


@torch.no_grad()
def critic_labels(
    episodes: Sequence[Episode],
    bags: Sequence[str],
    checkpoint: str | Path,
    batch_size: int = 256,
) -> tuple[list[EpisodeLabelsOut], dict[str, Any]]:
    """Labels from a learner checkpoint's dual-head critic (see the module docstring).

    Returns the labels and provenance (checkpoint id, method, learner step, warmup, IR).
    """
    manifest = read_manifest(checkpoint)
    config = trainer_config_from_manifest(manifest)
    method = config.method_config
    if not method.uses_dual_critic:
        raise ValueError(
            f"checkpoint {checkpoint} was trained with method {method.name!r}, which has no "
            "dual-head critic; export without --checkpoint, or give a habc/habc_v/habc_ir one"
        )
    store = ReplayStore(config.replay_config())
    store.add_episodes(episodes)
    trainer = Trainer(config, store)
    trainer.load_checkpoint(checkpoint)
    assert trainer.critic is not None and trainer.normalizer is not None
    trainer.policy.eval()
    norm = trainer.normalizer
    run_step = trainer.learner_step - trainer.run_start_step
    table = store.table
    n = len(table)
    p_v = np.zeros(n, np.float32)
    gate = np.zeros(n, np.float32)
    w_tilde = np.zeros(n, np.float32)

    def features(q: torch.Tensor, tokens: torch.Tensor, images: Any) -> torch.Tensor:
        if trainer.critic_encoder is not None:
            return trainer.critic_encoder(q, tokens, images)
        return trainer.policy.encode(q, tokens, images)

    cams = bool(config.policy.camera_names)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        batch = store.gather(rows, load_images=cams, next_images=cams)
        phi = features(norm.normalize_proprio(batch.proprio), batch.prompt_tokens, batch.images)
        phi_next = features(
            norm.normalize_proprio(batch.next_proprio), batch.prompt_tokens, batch.next_images
        )
        z_v, v_e = trainer.critic(phi)
        z_v_next, v_e_next = trainer.critic(phi_next)
        pv = torch.sigmoid(W.clamp_viability_logit(z_v))
        inputs = WeightInputs(
            source=batch.source,
            p_v=pv,
            a_v=W.viability_advantage(z_v, z_v_next, batch.has_next),
            a_e=W.efficiency_advantage(v_e, v_e_next, batch.step_cost, batch.has_next),
            learner_step=run_step,
            ir_active=trainer.ir_active,
        )
        wt, g = compute_w_tilde(method, inputs)
        p_v[rows], gate[rows], w_tilde[rows] = pv.numpy(), g.numpy(), wt.numpy()

    out = []
    for i, (ep, bag) in enumerate(zip(episodes, bags, strict=True)):
        sel = table.episode_index == i
        anchor = table.anchor[sel]
        if not np.array_equal(np.sort(anchor), np.arange(ep.length)):
            raise RuntimeError(f"{bag}: windows do not cover every frame once")

        def per_frame(
            values: np.ndarray, sel: np.ndarray = sel, anchor: np.ndarray = anchor
        ) -> np.ndarray:
            frame = np.empty(anchor.shape[0], values.dtype)
            frame[anchor] = values[sel]
            return frame

        out.append(
            EpisodeLabelsOut(
                bag=bag,
                episode_id=ep.episode_id,
                source=per_frame(table.source.astype(np.int64)),
                outcome_label=per_frame(table.outcome_label.astype(np.int64)),
                gate=per_frame(gate),
                w_tilde=per_frame(w_tilde),
                weight=np.zeros(ep.length, np.float32),
                p_v=per_frame(p_v),
            )
        )
    info = {
        "weights_from": "critic",
        "checkpoint": str(checkpoint),
        "checkpoint_id": manifest["checkpoint_id"],
        "method": method.name,
        "learner_step": trainer.learner_step,
        "warmup_active": run_step < method.warmup_steps,
        "ir_active": trainer.ir_active,
        "horizon": config.window.horizon,
        "min_human_steps": config.window.min_human_steps,
        "labeling": config.window.labeling,
    }
    return normalize_over_export(out), info


def source_names() -> dict[str, int]:
    """``Source`` codes by name (checked against the export's code table in tests)."""
    return {s.name.lower(): int(s) for s in Source}
