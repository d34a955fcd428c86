"""The protocol's statistics: the critic's outputs on a store's windows and their analysis
(calibration, gate and weights per data source, Imit-Recap pass rates, traces), and the
intervals the report uses (Student-t over seeds, Wilson for a success rate, the paired
bootstrap of :mod:`habc_learner.core.power`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(xs)) if xs else float("nan")


def critic_outputs(trainer, store, rows: np.ndarray, chunk: int = 4096) -> dict[str, np.ndarray]:
    """Per-window critic quantities of ``rows`` under the trainer's current networks.

    Dual-head critic: p_v, z_v, V_e, A_v (Eq. 5), A_e (Eq. 6) and the gate g_t (Eq. 7, the
    HABC-V gate for methods without efficiency head), computed exactly as in a training step
    but on every window. Imit-Recap parent value head: V and the TD residual δ_t. Plus each
    window's source, outcome label, episode index and anchor.
    """
    import torch

    from habc_learner.core import weights as W

    method = trainer.method
    normalizer = trainer.ensure_normalizer()
    was_training = trainer.policy.training
    trainer.policy.eval()
    cols: dict[str, list[np.ndarray]] = defaultdict(list)
    cams = bool(trainer.config.policy.camera_names)
    with torch.no_grad():
        for lo in range(0, len(rows), chunk):
            b = store.gather(rows[lo : lo + chunk], load_images=cams, next_images=True).to(
                trainer.device
            )
            q = normalizer.normalize_proprio(b.proprio)
            qn = normalizer.normalize_proprio(b.next_proprio)
            phi = trainer._features(q, b.prompt_tokens, b.images or None, None)
            phin = trainer._features(qn, b.prompt_tokens, b.next_images or None, None)
            cols["source"].append(b.source.cpu().numpy())
            cols["label"].append(b.outcome_label.cpu().numpy())
            cols["episode_success"].append(b.episode_success.cpu().numpy())
            if trainer.critic is not None:
                z_v, v_e = trainer.critic(phi)
                z_n, v_n = trainer.critic(phin)
                p_v = torch.sigmoid(W.clamp_viability_logit(z_v))
                a_v = W.viability_advantage(z_v, z_n, b.has_next)
                a_e = W.efficiency_advantage(v_e, v_n, b.step_cost, b.has_next)
                if method.train_efficiency:
                    gate = W.habc_gate(p_v, a_v, a_e)
                else:
                    gate = W.habc_v_gate(p_v, a_v, method.habc_v_gate)
                for key, val in (
                    ("p_v", p_v),
                    ("z_v", z_v),
                    ("v_e", v_e),
                    ("a_v", a_v),
                    ("a_e", a_e),
                    ("g", gate),
                ):
                    cols[key].append(val.cpu().numpy())
            if trainer.parent is not None:
                v = trainer.parent.value(phi)
                vn = trainer.parent.value(phin)
                cols["recap_value"].append(v.cpu().numpy())
                cols["recap_residual"].append(
                    W.recap_td_residual(b.recap_reward, v, vn, b.has_next).cpu().numpy()
                )
    trainer.policy.train(was_training)
    out = {k: np.concatenate(v) for k, v in cols.items()}
    table = store.table
    out["episode_index"] = table.episode_index[rows]
    out["anchor"] = table.anchor[rows]
    return out


#: A reliability record's keys (the ``calibration`` sections of the round records).
RELIABILITY_KEYS = (
    "n",
    "positives",
    "bin_count",
    "bin_mean_p",
    "bin_mean_y",
    "ece",
    "brier",
    "auroc",
    "mean_p",
    "mean_y",
)


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Binned reliability (count, mean p, mean y per bin), ECE, Brier score and AUROC: the
    figures of :func:`habc_learner.core.calibration.calibration_summary`, in the records'
    layout (AUROC with tied predictions at their mean rank; ECE NaN without windows)."""
    from habc_learner.core.calibration import calibration_summary

    summary = calibration_summary(p, y, bins)
    return {k: summary[k] for k in RELIABILITY_KEYS}


def analyse(
    trainer, store, rows: np.ndarray, traces: int = 0, trace_rows: np.ndarray | None = None
) -> dict[str, Any]:
    """Calibration, weight statistics per data source, Imit-Recap pass rates, critic traces."""
    from habc_learner.core.labeling import Source

    if trainer.critic is None and trainer.parent is None:
        return {}
    out = critic_outputs(trainer, store, rows)
    episodes = store.episodes
    took = np.array([bool(e.human_steps.any()) for e in episodes])
    ep = out["episode_index"]
    src = out["source"]
    res: dict[str, Any] = {"windows": len(rows)}
    if "p_v" in out:
        lab = out["label"] >= 0
        res["calibration"] = reliability(out["p_v"][lab], out["label"][lab])
        # Episode level: p_v at the first labeled window of each autonomous episode.
        first: dict[int, tuple[float, float]] = {}
        for i in np.flatnonzero(lab & ~took[ep]):
            e = int(ep[i])
            if e not in first or out["anchor"][i] < first[e][0]:
                first[e] = (out["anchor"][i], out["p_v"][i], out["label"][i])
        if first:
            vals = np.array([v[1:] for v in first.values()])
            res["calibration_episode_start"] = reliability(vals[:, 0], vals[:, 1], bins=5)
        g = out["g"]
        groups = {
            "success_autonomous": (src == Source.ROLLOUT_SUCCESS) & ~took[ep],
            "success_post_intervention": (src == Source.ROLLOUT_SUCCESS) & took[ep],
            "post_intervention": ((src == Source.ROLLOUT_SUCCESS) | (src == Source.ROLLOUT_FAILURE))
            & took[ep],
            "intervention": src == Source.INTERVENTION,
            "intervention_successful_episode": (src == Source.INTERVENTION)
            & out["episode_success"].astype(bool),
            "failure": src == Source.ROLLOUT_FAILURE,
            "demo": src == Source.DEMO,
        }
        res["gate"] = {
            k: {
                "n": int(m.sum()),
                "mean": _mean(g[m].tolist()),
                "std": float(g[m].std()) if m.any() else float("nan"),
                "p10": float(np.percentile(g[m], 10)) if m.any() else float("nan"),
                "p90": float(np.percentile(g[m], 90)) if m.any() else float("nan"),
                "mean_p_v": _mean(out["p_v"][m].tolist()),
                "mean_a_v": _mean(out["a_v"][m].tolist()),
                "mean_a_e": _mean(out["a_e"][m].tolist()),
            }
            for k, m in groups.items()
        }
        # Normalized weights (Eq. 8) over the union the batches are drawn from (proportional
        # mixing = uniform over the windows), IR off and on.
        for ir in (False, True):
            w_t = np.zeros(len(g))
            w_t[src == Source.DEMO] = 1.0
            w_t[src == Source.ROLLOUT_SUCCESS] = g[src == Source.ROLLOUT_SUCCESS]
            w_t[src == Source.INTERVENTION] = g[src == Source.INTERVENTION] if ir else 1.0
            valid = w_t > 0
            c = w_t[valid].mean() if valid.any() else 1.0
            res["normalized_w_ir" if ir else "normalized_w"] = {
                k: _mean((w_t[m] / c).tolist()) for k, m in groups.items()
            }
    if "recap_residual" in out:
        thr = trainer.recap_threshold
        roll = (src == Source.ROLLOUT_SUCCESS) | (src == Source.ROLLOUT_FAILURE)
        passed = out["recap_residual"] > (thr if thr is not None else np.inf)
        human = np.zeros(len(rows), dtype=bool)
        for i in np.flatnonzero(roll):
            human[i] = episodes[int(ep[i])].human_steps[int(out["anchor"][i])]
        res["recap"] = {
            "threshold": thr,
            "pass_rate": _mean(passed[roll].astype(float).tolist()),
            "pass_rate_success_episodes": _mean(
                passed[roll & (src == Source.ROLLOUT_SUCCESS)].astype(float).tolist()
            ),
            "pass_rate_failure_episodes": _mean(
                passed[roll & (src == Source.ROLLOUT_FAILURE)].astype(float).tolist()
            ),
            "pass_rate_human_steps": _mean(passed[roll & human].astype(float).tolist()),
            "passed_from_failed_episodes": _mean(
                (src[roll & passed] == Source.ROLLOUT_FAILURE).astype(float).tolist()
            ),
            "rollout_windows": int(roll.sum()),
        }
    if traces and "p_v" in out and trace_rows is not None:
        res["traces"] = _traces(out, episodes, took, set(store.table.episode_index[trace_rows]))
    return res


def _traces(out: dict[str, np.ndarray], episodes, took, candidates: set, k: int = 3) -> list:
    """p_v, V_e, g_t along up to ``k`` episodes: an autonomous success, an autonomous failure
    and one with a takeover (the paper's Figures 4-5)."""
    from habc_learner.core.episode import HUMAN

    picks: list[int] = []
    kinds = (
        ("autonomous success", lambda e, t: e.outcome.value == "success" and not t),
        ("autonomous failure", lambda e, t: e.outcome.value == "failure" and not t),
        ("takeover", lambda e, t: t),
    )
    traces = []
    for label, pred in kinds[:k]:
        for e in sorted(candidates):
            if e not in picks and pred(episodes[e], took[e]):
                picks.append(e)
                m = out["episode_index"] == e
                order = np.argsort(out["anchor"][m])
                epi = episodes[e]
                human = (epi.authority == HUMAN).any(axis=1)
                traces.append(
                    {
                        "kind": label,
                        "episode_id": epi.episode_id,
                        "outcome": epi.outcome.value,
                        "success_step": epi.success_step,
                        "human": np.flatnonzero(human).tolist(),
                        "anchor": out["anchor"][m][order].tolist(),
                        "source": out["source"][m][order].tolist(),
                        **{
                            key: np.round(out[key][m][order], 4).tolist()
                            for key in ("p_v", "v_e", "g", "a_v", "a_e")
                        },
                    }
                )
                break
    return traces


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}


def ci95(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and half-width of the 95 % Student-t interval over seeds (NaN half-width for n=1)."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(v[0]), float("nan"), 1
    half = T975.get(n - 1, 1.96) * float(v.std(ddof=1)) / math.sqrt(n)
    return float(v.mean()), half, n


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate ``successes / n``:
    ``(p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)``; ``(nan, nan)`` for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def fmt_rate(successes: int, n: int) -> str:
    """``"62 % [48, 74]"``: the rate with its 95 % Wilson interval, in percent."""
    lo, hi = wilson_interval(successes, n)
    return f"{100 * successes / n:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}]" if n else "–"


def fmt_ci(values: Sequence[float], scale: float = 100.0, digits: int = 0) -> str:
    m, h, n = ci95(values)
    if n == 0:
        return "–"
    if math.isnan(h):
        return f"{scale * m:.{digits}f}"
    return f"{scale * m:.{digits}f} ± {scale * h:.{digits}f}"


def _series(recs, method: str, round_index: int, key: str) -> dict[int, float]:
    """seed -> eval[key] of (method, round); round 0 is the shared SFT start."""
    want = ("sft_start", 0) if round_index == 0 else (method, round_index)
    return {r["seed"]: float(r["eval"][key]) for r in recs if (r["method"], r["round"]) == want}


def _outcomes(recs, method: str, round_index: int) -> dict[int, list[int]]:
    """seed -> per-pose success (0/1, pose order) of (method, round); round 0: the SFT start."""
    want = ("sft_start", 0) if round_index == 0 else (method, round_index)
    return {
        r["seed"]: [int(e[0]) for e in r["eval"]["episodes"]]
        for r in recs
        if (r["method"], r["round"]) == want
    }


def paired_rows(recs, pairs: Sequence[tuple[str, int, str, int]], n_boot: int = 10_000):
    """For each (method A, round a, method B, round b): the paired difference A − B over the
    seeds both have, on the same poses, with its two-level bootstrap 95 % interval
    (:func:`habc_learner.core.power.paired_bootstrap`); None where no seed has both."""
    from habc_learner.core.power import paired_bootstrap

    out = []
    for ma, ka, mb, kb in pairs:
        a, b = _outcomes(recs, ma, ka), _outcomes(recs, mb, kb)
        seeds = sorted(s for s in a if s in b and len(a[s]) == len(b[s]))
        iv = (
            paired_bootstrap([a[s] for s in seeds], [b[s] for s in seeds], n_boot=n_boot)
            if seeds
            else None
        )
        out.append(((ma, ka, mb, kb), iv))
    return out
