"""The protocol's figures: success per round, the critic's reliability diagram, the gate per
data source, and p_v, V_e, g_t along a few episodes (the paper's Figures 4-5).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from habc_learner.protocol.config import PAPER_G_SUCCESS, ProtocolConfig, _rounds_of
from habc_learner.protocol.stats import _mean, _series, ci95


def _method_colors(methods: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def plot_rounds(cfg: ProtocolConfig, recs, out: Path) -> list[str]:
    """Success per round per method and successful-episode length (mean ± 95 % CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys([*cfg.methods, *(cfg.step2_methods if cfg.step2_rounds else ())]))
    colors = _method_colors(methods)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for j, m in enumerate(methods):
        rounds, mean, half, lmean, lhalf = [], [], [], [], []
        for k in (
            _rounds_of(cfg, m)
            if m in cfg.methods
            else [cfg.rounds, *range(cfg.rounds + 1, cfg.rounds + cfg.step2_rounds + 1)]
        ):
            src = m
            if k == 0:
                src = "sft_start"
            elif m not in cfg.methods and k == cfg.rounds:
                src = cfg.step2_from
            s = _series(recs, src, k, "success_rate")
            ln = _series(recs, src, k, "mean_success_length")
            if not s:
                continue
            a, h, _ = ci95(list(s.values()))
            b, hb, _ = ci95(list(ln.values()))
            rounds.append(k + 0.04 * (j - len(methods) / 2))
            mean.append(100 * a)
            half.append(0 if math.isnan(h) else 100 * h)
            lmean.append(b)
            lhalf.append(0 if math.isnan(hb) else hb)
        if not rounds:
            continue
        ls = "-" if m in cfg.methods else "--"
        ax1.errorbar(
            rounds, mean, yerr=half, marker="o", capsize=3, ls=ls, color=colors[m], label=m
        )
        ax2.errorbar(rounds, lmean, yerr=lhalf, marker="o", capsize=3, ls=ls, color=colors[m])
    if cfg.step2_rounds:
        for ax in (ax1, ax2):
            ax.axvline(cfg.rounds + 0.5, color="grey", lw=0.8, ls=":")
            ax.text(
                cfg.rounds + 0.55,
                0.98,
                "step 2",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
                color="grey",
            )
    n = len({r["seed"] for r in recs})
    ax1.set_title(f"success over {cfg.eval_episodes} fresh poses (mean ± 95 % CI, {n} seeds)")
    ax1.set_xlabel("round (0 = SFT start)")
    ax1.set_ylabel("success rate (%)")
    ax1.set_ylim(-2, 102)
    ax2.set_title("mean length of successful episodes")
    ax2.set_xlabel("round (0 = SFT start)")
    ax2.set_ylabel("steps")
    ax1.legend(fontsize=8, loc="best")
    fig.suptitle(
        f"{cfg.task}: paper protocol, {cfg.rollouts} rollouts + {cfg.round_steps} steps per round",
        fontsize=10,
    )
    fig.tight_layout()
    name = "success_per_round.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]


def plot_analysis(cfg: ProtocolConfig, recs, out: Path) -> list[str]:
    """Reliability diagram, gate statistics per source, critic traces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    # Reliability: pool bins over seeds, per (method, data), the last round that has them.
    pools: dict[tuple[str, str], dict] = {}
    for r in recs:
        for part in ("fresh", "store"):
            c = r.get("analysis", {}).get(part, {}).get("calibration")
            if not c:
                continue
            key = (r["method"], part)
            cur = pools.get(key)
            if cur is None or r["round"] > cur["round"]:
                pools[key] = {"round": r["round"], "cals": [c]}
            elif r["round"] == cur["round"]:
                cur["cals"].append(c)
    if pools:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
        for ax, part, title in (
            (axes[0], "fresh", "fresh rollouts (critic of round k−1)"),
            (axes[1], "store", "training store (after round k)"),
        ):
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
            for (m, p), pool in sorted(pools.items()):
                if p != part:
                    continue
                n = np.sum([c["bin_count"] for c in pool["cals"]], axis=0)
                sp = np.sum(
                    [
                        np.nan_to_num(np.array(c["bin_mean_p"]) * c["bin_count"])
                        for c in pool["cals"]
                    ],
                    axis=0,
                )
                sy = np.sum(
                    [
                        np.nan_to_num(np.array(c["bin_mean_y"]) * c["bin_count"])
                        for c in pool["cals"]
                    ],
                    axis=0,
                )
                nz = n > 0
                ax.plot(
                    sp[nz] / n[nz],
                    sy[nz] / n[nz],
                    marker="o",
                    label=f"{m} r{pool['round']} (n={int(n.sum())})",
                )
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("predicted p_v (bin mean)")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("realised success fraction")
        fig.suptitle(f"{cfg.task}: critic calibration (reliability diagram)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "calibration.png", dpi=110)
        plt.close(fig)
        names.append("calibration.png")
    # Gate per source per round
    rows = defaultdict(list)
    for r in recs:
        gate = r.get("analysis", {}).get("store", {}).get("gate")
        if gate:
            rows[r["method"]].append((r["round"], gate))
    if rows:
        groups = ("success_autonomous", "success_post_intervention", "intervention", "failure")
        fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.8), squeeze=False)
        for ax, (m, items) in zip(axes[0], sorted(rows.items())):
            ks = sorted({k for k, _ in items})
            width = 0.8 / len(groups)
            for gi, grp in enumerate(groups):
                vals = [_mean([g[grp]["mean"] for k2, g in items if k2 == k]) for k in ks]
                ax.bar(np.arange(len(ks)) + gi * width, vals, width, label=grp.replace("_", " "))
            ax.axhspan(*PAPER_G_SUCCESS, color="green", alpha=0.12, label="paper g succ. auton.")
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            ax.set_xticks(np.arange(len(ks)) + 0.4 - width / 2)
            ax.set_xticklabels([f"r{k}" for k in ks])
            ax.set_ylim(0, 2)
            ax.set_title(f"{m}: mean g_t per source", fontsize=9)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "weights.png", dpi=110)
        plt.close(fig)
        names.append("weights.png")
    # Traces (the paper's Figures 4-5) of the step-1 method step 2 continues, lowest seed:
    # in-sample (after round k, on that round's rollouts) and fresh (after round k−1, on round
    # k's rollouts, which the critic has never trained on).
    for part, name, what in (
        ("store", "traces.png", "critic after round {k} along rollouts it trained on"),
        ("fresh", "traces_fresh.png", "critic after round {km1} along round {k}'s new rollouts"),
    ):
        traced = [r for r in recs if r.get("analysis", {}).get(part, {}).get("traces")]
        if not traced:
            continue
        pref = [r for r in traced if r["method"] == cfg.step2_from] or traced
        r = max(pref, key=lambda x: (x["step"] == 1, x["round"], -x["seed"]))
        title = (
            f"{cfg.task}, {r['method']}, seed {r['seed']}: "
            + what.format(k=r["round"], km1=r["round"] - 1)
            + "\n(orange: operator in control; green: success step)"
        )
        _plot_traces(r["analysis"][part]["traces"], title, out / name)
        names.append(name)
    return names


def _plot_traces(traces: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        3, len(traces), figsize=(4.3 * len(traces), 6.6), squeeze=False, sharex="col"
    )
    for j, tr in enumerate(traces):
        t = np.array(tr["anchor"])
        for i, (key, label) in enumerate(
            (("p_v", "p_v (viability)"), ("v_e", "V_e (−steps to success)"), ("g", "g_t"))
        ):
            ax = axes[i][j]
            ax.plot(t, tr[key], lw=1.0)
            if tr["human"]:
                h = np.array(tr["human"])
                ax.axvspan(h.min(), h.max(), color="orange", alpha=0.2, label="operator")
            if tr["success_step"] is not None and tr["outcome"] == "success":
                ax.axvline(tr["success_step"], color="green", lw=0.8, ls="--")
            if key == "g":
                ax.axhline(1.0, color="grey", lw=0.8, ls=":")
                ax.set_ylim(0, 2)
            if key == "p_v":
                ax.set_ylim(-0.02, 1.02)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
        axes[0][j].set_title(f"{tr['kind']} ({tr['outcome']})\n{tr['episode_id']}", fontsize=8)
        axes[-1][j].set_xlabel("step")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)
