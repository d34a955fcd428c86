"""What the critic sees along one episode: p_v, V_e, A_v, A_e and g_t per anchor step, and the
authority timeline's styles (the ``habc-inspect`` command draws them).

Every quantity is computed exactly as in a learner step (:mod:`habc_learner.core.weights`),
with the critic in eval mode, but on every window of the episode and without warmup: g_t is
Eq. 7 as the weights would use it after warmup (the HABC-V gate for methods without an
efficiency head).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from habc_learner.core import episode as E
from habc_learner.core import weights as W

#: Authority code -> (name, colour) for the timeline. A new code is one line here.
AUTHORITY_STYLES: dict[int, tuple[str, str]] = {
    E.NONE: ("none", "#bbbbbb"),
    E.POLICY: ("policy", "#1f77b4"),
    E.HUMAN: ("human", "#d62728"),
    E.HANDBACK: ("hand-back", "#ff7f0e"),
}
UNKNOWN_STYLE_COLOUR = "#000000"


def authority_style(code: int) -> tuple[str, str]:
    """(name, colour) of an authority code; an unknown code gets ``"code N"`` in black."""
    return AUTHORITY_STYLES.get(int(code), (f"code {int(code)}", UNKNOWN_STYLE_COLOUR))


@torch.no_grad()
def critic_trace(trainer: Any, episode_index: int, chunk: int = 1024) -> dict[str, np.ndarray]:
    """Per anchor step t of episode ``episode_index`` of ``trainer.store`` (sorted by t):

    ``anchor``, ``source``, ``label`` (outcome label, -1 unlabeled), ``z_v`` (clamped logit),
    ``p_v``, ``v_e``, ``a_v`` (Eq. 5), ``a_e`` (Eq. 6) and ``g`` (Eq. 7, no warmup), all [T].
    """
    if trainer.critic is None:
        raise ValueError(
            f"method {trainer.method.name!r} has no dual-head critic (p_v, V_e): nothing to trace"
        )
    store = trainer.store
    table = store.table
    rows = np.flatnonzero(table.episode_index == episode_index)
    rows = rows[np.argsort(table.anchor[rows], kind="stable")]
    normalizer = trainer.ensure_normalizer()
    was_training = trainer.policy.training
    trainer.policy.eval()
    cams = bool(trainer.config.policy.camera_names)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("z_v", "p_v", "v_e", "a_v", "a_e", "g")}
    for lo in range(0, len(rows), chunk):
        b = store.gather(rows[lo : lo + chunk], load_images=cams, next_images=True)
        b = b.to(trainer.device)
        phi = trainer._features(
            normalizer.normalize_proprio(b.proprio), b.prompt_tokens, b.images or None, None
        )
        phi_next = trainer._features(
            normalizer.normalize_proprio(b.next_proprio),
            b.prompt_tokens,
            b.next_images or None,
            None,
        )
        z_v, v_e = trainer.critic(phi)
        z_n, v_n = trainer.critic(phi_next)
        z_c = W.clamp_viability_logit(z_v)
        p_v = torch.sigmoid(z_c)
        a_v = W.viability_advantage(z_v, z_n, b.has_next)
        a_e = W.efficiency_advantage(v_e, v_n, b.step_cost, b.has_next)
        temperature = trainer.method.advantage_temperature
        if trainer.method.train_efficiency:
            g = W.habc_gate(p_v, a_v, a_e, temperature)
        else:
            g = W.habc_v_gate(p_v, a_v, trainer.method.habc_v_gate, temperature)
        for key, value in (
            ("z_v", z_c),
            ("p_v", p_v),
            ("v_e", v_e),
            ("a_v", a_v),
            ("a_e", a_e),
            ("g", g),
        ):
            cols[key].append(value.cpu().numpy())
    trainer.policy.train(was_training)
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    out["anchor"] = table.anchor[rows]
    out["source"] = table.source[rows]
    out["label"] = table.outcome_label[rows]
    return out


def trace_summary(trace: dict[str, np.ndarray]) -> dict[str, float]:
    """Headline numbers of a trace: p_v first / last / mean, mean |Δz_v| per step, p_v = 0.5
    crossings, V_e at the first step, mean g and the shares with g < 0.1 and g > 1.9."""
    z, g = trace["z_v"], trace["g"]
    dz = np.abs(np.diff(z)) if len(z) > 1 else np.zeros(0)
    crossings = int((np.diff(z > 0) != 0).sum()) if len(z) > 1 else 0
    nan = float("nan")
    return {
        "p_v_first": float(trace["p_v"][0]) if len(z) else nan,
        "p_v_last": float(trace["p_v"][-1]) if len(z) else nan,
        "p_v_mean": float(trace["p_v"].mean()) if len(z) else nan,
        "mean_abs_dz": float(dz.mean()) if len(dz) else nan,
        "crossings": float(crossings),
        "v_e_first": float(trace["v_e"][0]) if len(z) else nan,
        "g_mean": float(g.mean()) if len(g) else nan,
        "g_below_0.1": float((g < 0.1).mean()) if len(g) else nan,
        "g_above_1.9": float((g > 1.9).mean()) if len(g) else nan,
    }
