"""``habc-inspect``: p_v, V_e, g_t and the authority timeline along a recorded episode bag, under
any learner checkpoint.

    habc-inspect runs/bringup/bags/round_1/rollout-0000003 runs/bringup/checkpoints/habc/LATEST \\
        --out inspect.png

The bag goes through the learner's bag reader, the checkpoint's trainer configuration rebuilds
its critic (features, heads, labeling), and every window of the episode is scored as a learner
step would score it (:func:`habc_learner.core.inspection.critic_trace`). Writes a PNG (four
panels sharing the step axis) and prints a short summary; ``--json`` also writes the trace.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np


def trainer_config_from_manifest(manifest: dict[str, Any]):
    """The :class:`TrainerConfig` a learner checkpoint was written under (no logging, no
    checkpoint directory)."""
    from habc_learner.core.critic import CriticConfig
    from habc_learner.core.methods import method_from_dict
    from habc_learner.core.trainer import TrainerConfig
    from habc_learner.core.windows import WindowConfig
    from habc_policy.core.configuration_flow import FlowPolicyConfig

    saved = manifest.get("trainer_config")
    if not isinstance(saved, dict):
        raise ValueError(
            "checkpoint manifest has no trainer_config: not a learner checkpoint "
            "(a policy-only checkpoint has no critic)"
        )
    critic = dict(saved["critic"])
    if "feature_source" in critic:  # written before CriticConfig.features existed
        critic["features"] = critic.pop("feature_source")
    known = {f.name for f in dataclasses.fields(CriticConfig)}
    window_known = {f.name for f in dataclasses.fields(WindowConfig)}
    return TrainerConfig(
        method=method_from_dict(saved["method"]),
        policy=FlowPolicyConfig.from_dict(manifest["policy_config"]),
        critic=CriticConfig(**{k: v for k, v in critic.items() if k in known}),
        window=WindowConfig(**{k: v for k, v in saved["window"].items() if k in window_known}),
        batch_size=1,
        progress=False,
        checkpoint_dir=None,
        log_dir=None,
    )


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or a checkpoint root (its ``LATEST``)."""
    from habc_policy.core import checkpoint as ckpt

    if (path / ckpt.MANIFEST_NAME).exists():
        return path
    latest = ckpt.latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise FileNotFoundError(f"{path} is neither a checkpoint nor a folder with LATEST")
    return latest


def plot_trace(episode: Any, trace: dict[str, np.ndarray], title: str, out: Path) -> None:
    """Four panels over the control steps: p_v, V_e (with −(T_s − t) for a success), g_t and
    the per-arm authority timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from habc_learner.core.inspection import authority_style

    t = trace["anchor"]
    fig, axes = plt.subplots(
        4, 1, figsize=(10, 8), sharex=True, gridspec_kw={"height_ratios": [3, 3, 3, 1.2]}
    )
    ax_p, ax_v, ax_g, ax_a = axes
    ax_p.plot(t, trace["p_v"], color="#2ca02c")
    ax_p.axhline(0.5, color="grey", lw=0.5, ls=":")
    ax_p.set_ylim(-0.02, 1.02)
    ax_p.set_ylabel("p_v")
    ax_v.plot(t, trace["v_e"], color="#9467bd", label="V_e")
    if episode.success_step is not None and episode.outcome.value == "success":
        mc = -np.maximum(episode.success_step - t, 0)
        ax_v.plot(t, mc, color="grey", ls="--", lw=0.8, label="−(T_s − t)")
        ax_v.legend(loc="lower right", fontsize=8)
    ax_v.set_ylabel("V_e (steps)")
    ax_g.plot(t, trace["g"], color="#8c564b", lw=0.8)
    for y in (0.1, 1.0, 1.9):
        ax_g.axhline(y, color="grey", lw=0.5, ls=":")
    ax_g.set_ylim(-0.05, 2.05)
    ax_g.set_ylabel("g_t")
    authority = np.asarray(episode.authority)
    codes_seen: list[int] = []
    for arm in range(authority.shape[1]):
        col = authority[:, arm]
        start = 0
        for i in range(1, len(col) + 1):
            if i == len(col) or col[i] != col[start]:
                code = int(col[start])
                ax_a.broken_barh(
                    [(start - 0.5, i - start)], (arm - 0.4, 0.8), color=authority_style(code)[1]
                )
                if code not in codes_seen:
                    codes_seen.append(code)
                start = i
    ax_a.set_yticks(range(authority.shape[1]))
    ax_a.set_yticklabels([f"arm {i}" for i in range(authority.shape[1])], fontsize=8)
    ax_a.set_xlabel("control step")
    ax_a.legend(
        handles=[
            Patch(color=authority_style(c)[1], label=authority_style(c)[0])
            for c in sorted(codes_seen)
        ],
        loc="upper right",
        fontsize=8,
        ncol=len(codes_seen),
    )
    if episode.success_step is not None and episode.outcome.value == "success":
        for ax in axes:
            ax.axvline(episode.success_step, color="#2ca02c", lw=0.8, ls="--")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)


def inspect(bag: Path, checkpoint: Path, out: Path, json_out: Path | None = None) -> dict:
    """Trace one bag under one checkpoint; write the PNG (and JSON); return the summary."""
    import torch

    from habc_learner.core.bag_reader import BagSkipped, read_episode
    from habc_learner.core.episode import HUMAN
    from habc_learner.core.inspection import critic_trace, trace_summary
    from habc_learner.core.replay import ReplayStore
    from habc_learner.core.trainer import Trainer
    from habc_policy.core import checkpoint as ckpt

    checkpoint = resolve_checkpoint(checkpoint)
    manifest = ckpt.read_manifest(checkpoint)
    config = trainer_config_from_manifest(manifest)
    try:
        episode = read_episode(bag)
    except BagSkipped as exc:
        raise ValueError(f"{bag}: {exc}") from None
    store = ReplayStore(config.replay_config())
    store.add_episode(episode)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    with Trainer(config, store) as trainer:
        trainer.load_checkpoint(checkpoint)
        trace = critic_trace(trainer, 0)
        step = trainer.learner_step
    summary = trace_summary(trace)
    human = (np.asarray(episode.authority) == HUMAN).any(axis=1)
    summary.update(
        {
            "episode_id": episode.episode_id,
            "outcome": episode.outcome.value,
            "length": episode.length,
            "success_step": episode.success_step,
            "human_steps": int(human.sum()),
            "method": config.method_config.name,
            "features": config.critic.features,
            "learner_step": step,
        }
    )
    title = (
        f"{episode.episode_id} ({episode.outcome.value}, {episode.length} steps, "
        f"{int(human.sum())} human) under {config.method_config.name} step {step} "
        f"[{config.critic.features}]"
    )
    plot_trace(episode, trace, title, out)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        data = {"summary": summary, **{k: v.tolist() for k, v in trace.items()}}
        json_out.write_text(json.dumps(data, default=float))
    return summary


def format_summary(s: dict[str, Any], out: Path) -> str:
    return "\n".join(
        [
            f"episode {s['episode_id']}: {s['outcome']}, {s['length']} steps, "
            f"success step {s['success_step']}, {s['human_steps']} human steps",
            f"checkpoint: {s['method']} at learner step {s['learner_step']}, "
            f"critic features {s['features']}",
            f"p_v: first {s['p_v_first']:.4f} last {s['p_v_last']:.4f} "
            f"mean {s['p_v_mean']:.4f}; mean |dz_v| per step {s['mean_abs_dz']:.4f}; "
            f"0.5 crossings {s['crossings']:.0f}",
            f"V_e: first {s['v_e_first']:.2f}",
            f"g: mean {s['g_mean']:.4f}; share < 0.1 {s['g_below_0.1']:.4f}; "
            f"share > 1.9 {s['g_above_1.9']:.4f}",
            f"wrote {out}",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="habc-inspect",
        description="Draw p_v, V_e, g_t and the authority timeline along a recorded episode bag "
        "under a learner checkpoint (PNG), and print a summary.",
    )
    p.add_argument("bag", type=Path, help="an episode bag directory")
    p.add_argument(
        "checkpoint", type=Path, help="a learner checkpoint, or a checkpoint root (uses LATEST)"
    )
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: <bag name>.png)")
    p.add_argument("--json", type=Path, default=None, help="also write the trace as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from habc_policy.core.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    out = args.out or Path(f"{args.bag.name}.png")
    try:
        summary = inspect(args.bag, args.checkpoint, out, args.json)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"habc-inspect: error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
