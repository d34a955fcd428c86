"""The paper's arrangement: HABC's dual-head critic on the VLA's own backbone (LeRobot env).

``habc-lerobot-train --weights backbone`` trains habc's :class:`DualHeadCritic` on
φ_VLA(s), the VLA's prefix hidden states (images, prompt and, for SmolVLA, state, through the
VLM), mean-pooled over the valid tokens and detached (the critic never moves the backbone, as
habc's default ``feature_source="actor_encoder"`` detaches the actor's features). Each step:

- critic: Eq. 4, E_{D_lab}[BCE(z_v, z_e)] + E_{D_succ}[Huber(V_e, −(T_s − t))] (habc's Monte-Carlo
  efficiency target), labels from the export (``habc.outcome_label``, ``habc.label_source``,
  the episode's success step);
- gate: Eq. 5–7 on (s_t, s_{t+1}) with the next frame of the same episode (A = 0 at the last),
  g ≡ 1 during ``--gate-warmup`` steps;
- weight: the §3.4 table w̃ (demo 1, success g, failure 0, unlabeled 0, intervention 1) and Eq. 8
  within the batch, then the actor loss Σ w·ℓ / Σ w.

This is habc's learner's computation with φ(s) swapped for the VLA's features; with a real
π0/π0.5 it needs a GPU. Only the weights move with it: labels and masks are the export's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from habc_bridge.core import dataset_schema as S
from habc_learner.core import critic as C
from habc_learner.core import weights as W

CRITIC_FILE = "habc_critic.safetensors"
CRITIC_CONFIG = "habc_critic.json"


@torch.no_grad()
def backbone_features(policy: Any, batch: dict[str, Any]) -> Tensor:
    """φ_VLA(s) [B, W]: the VLM's prefix outputs, mean over valid tokens, float32, detached."""
    from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    kind, m = policy.config.type, policy.model
    tokens, masks = batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK]
    if kind == "smolvla":
        images, img_masks = policy.prepare_images(batch)
        state = policy.prepare_state(batch)
        embs, pad, att = m.embed_prefix(images, img_masks, tokens, masks, state=state)
        att2d = make_att_2d_masks(pad, att)
        (out, _), _ = m.vlm_with_expert.forward(
            attention_mask=att2d,
            position_ids=torch.cumsum(pad, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=True,  # the prefix-only (prefill) path, as sample_actions runs it
        )
    elif kind in ("pi0", "pi05"):
        images, img_masks = policy._preprocess_images(batch)
        embs, pad, att = m.embed_prefix(images, img_masks, tokens, masks)
        att2d = make_att_2d_masks(pad, att)
        (out, _), _ = m.paligemma_with_expert.forward(
            attention_mask=prepare_attention_masks_4d(att2d),
            position_ids=torch.cumsum(pad, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=False,
        )
    else:
        raise ValueError(f"no backbone features for policy type {kind!r}")
    valid = pad.to(torch.float32).unsqueeze(-1)
    return (out.float() * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)


@dataclass(frozen=True)
class FrameTable:
    """Per dataset index (all [N]): what the critic and the gate need from the export."""

    source: np.ndarray
    outcome_label: np.ndarray
    next_index: np.ndarray
    has_next: np.ndarray
    steps_to_go: np.ndarray
    episode_success: np.ndarray

    @classmethod
    def from_dataset(cls, ds: Any, root: Path) -> FrameTable:
        meta = json.loads((root / "meta" / S.META_FILE).read_text())
        hf = ds.hf_dataset
        episode = np.asarray(hf["episode_index"], np.int64).reshape(-1)
        frame = np.asarray(hf["frame_index"], np.int64).reshape(-1)
        length = np.array([e["length"] for e in meta["episodes"]], np.int64)[episode]
        success = np.array([e["outcome"] == "success" for e in meta["episodes"]])[episode]
        t_s = np.array(
            [
                e["success_step"] if e["success_step"] is not None else e["length"] - 1
                for e in meta["episodes"]
            ],
            np.float64,
        )[episode]
        has_next = frame + 1 < length
        return cls(
            source=np.asarray(hf[S.COL_SOURCE], np.int64).reshape(-1),
            outcome_label=np.asarray(hf[S.COL_OUTCOME_LABEL], np.int64).reshape(-1),
            next_index=np.where(has_next, np.arange(frame.size) + 1, np.arange(frame.size)),
            has_next=has_next,
            steps_to_go=np.where(success, np.maximum(t_s - frame, 0), np.nan).astype(np.float32),
            episode_success=success,
        )

    def useful(self) -> np.ndarray:
        """Frames the actor (w̃ may be > 0) or the critic (D_lab, D_succ) learns from."""
        return np.flatnonzero(
            (self.source != S.SOURCE_CODES["unlabeled"]) | (self.outcome_label >= 0)
        )


def backbone_weights(
    critic: C.DualHeadCritic,
    phi: Tensor,
    phi_next: Tensor,
    table: FrameTable,
    idx: np.ndarray,
    gate_on: bool,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """(critic loss, w [B], info) for the frames ``idx`` with features φ, φ'."""
    source = torch.from_numpy(table.source[idx])
    outcome = torch.from_numpy(table.outcome_label[idx].astype(np.float32))
    has_next = torch.from_numpy(table.has_next[idx])
    steps_to_go = torch.from_numpy(table.steps_to_go[idx])
    success = torch.from_numpy(table.episode_success[idx])
    z_v, v_e = critic(phi)
    with torch.no_grad():
        z_v_next, v_e_next = critic(phi_next)
    loss, info = C.critic_loss(
        z_v,
        v_e,
        outcome,
        C.efficiency_mc_target(steps_to_go),
        C.d_lab_mask(outcome),
        C.d_succ_mask(source, success),
    )
    with torch.no_grad():
        p_v = torch.sigmoid(W.clamp_viability_logit(z_v))
        a_v = W.viability_advantage(z_v, z_v_next, has_next)
        a_e = W.efficiency_advantage(v_e, v_e_next, torch.ones_like(v_e), has_next)
        gate = W.habc_gate(p_v, a_v, a_e) if gate_on else torch.ones_like(p_v)
        w = W.normalize_weights(W.source_weights(source, gate, intervention_reweighting=False))
    succ = source == S.SOURCE_CODES["rollout_success"]
    info["critic/p_v_mean"] = float(p_v.mean())
    info["weights/mean_g_success"] = float(gate[succ].mean()) if succ.any() else float("nan")
    return loss, w, info


def save_critic(critic: C.DualHeadCritic, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in critic.state_dict().items()}, folder / CRITIC_FILE)
    cfg = critic.config
    doc = {
        "feature_dim": critic.viability[0].normalized_shape[0],
        "hidden_dim": cfg.hidden_dim,
        "num_layers": cfg.num_layers,
        "efficiency_scale": cfg.efficiency_scale,
    }
    (folder / CRITIC_CONFIG).write_text(json.dumps(doc))


def load_critic(folder: Path) -> C.DualHeadCritic:
    from safetensors.torch import load_file

    doc = json.loads((folder / CRITIC_CONFIG).read_text())
    feature_dim = doc.pop("feature_dim")
    critic = C.DualHeadCritic(feature_dim, C.CriticConfig(**doc))
    critic.load_state_dict(load_file(str(folder / CRITIC_FILE)), strict=True)
    return critic
