"""The critic along fresh rollouts of a ``habc-protocol`` run: smoothness and gate shares.

For each seed of the run's work folder and each round k ≥ 2 of ``--method``: the critic of
round k−1's checkpoint traced along every episode of round k's rollouts (made by that
checkpoint's policy, never trained on by that critic) with :func:`habc_learner.core.inspection.
critic_trace`. Prints per round: episodes, mean |Δz_v| per control step (z_v = logit p_v),
p_v = 0.5 crossings per episode, mean g, the shares of windows with g < 0.1 and g > 1.9, and
the same over successful episodes only. Example (the budget run)::

    python bench/bench_critic_traces.py --work runs/power2 --task transfer_cube --method habc
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("habc_policy", "habc_learner", "habc_common"):
    sys.path.insert(0, str(ROOT / "src" / pkg))

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/power2"))
    p.add_argument("--task", default="transfer_cube")
    p.add_argument("--method", default="habc")
    p.add_argument("--max-episodes", type=int, default=50, help="per seed and round")
    args = p.parse_args(argv)

    import json

    import torch

    torch.set_num_threads(1)
    from habc_learner.core.bag_reader import read_episodes
    from habc_learner.core.inspection import critic_trace, trace_summary
    from habc_learner.core.replay import ReplayStore
    from habc_learner.core.trainer import Trainer
    from habc_learner.inspect_bag import trainer_config_from_manifest
    from habc_policy.core import checkpoint as ckpt

    rows: dict[int, list[dict]] = {}
    for seed_dir in sorted((args.work / args.task).glob("seed*")):
        for rec_path in sorted((seed_dir / args.method).glob("round_*.json")):
            rec = json.loads(rec_path.read_text())
            k = int(rec["round"])
            folder = seed_dir / "rollouts" / f"{args.method}_r{k}"  # made by round k's policy
            nxt = seed_dir / args.method / f"round_{k + 1:02d}.json"
            if not folder.is_dir() or not nxt.exists():
                continue
            checkpoint = Path(rec["checkpoint"])
            config = trainer_config_from_manifest(ckpt.read_manifest(checkpoint))
            episodes, _ = read_episodes(folder)
            store = ReplayStore(config.replay_config())
            store.add_episodes(episodes[: args.max_episodes])
            with Trainer(config, store) as trainer:
                trainer.load_checkpoint(checkpoint)
                for e, ep in enumerate(store.episodes):
                    s = trace_summary(critic_trace(trainer, e))
                    s["success"] = ep.outcome.value == "success"
                    rows.setdefault(k + 1, []).append(s)
    print(f"== critic of round k-1 along round k's fresh rollouts: {args.task}, {args.method}")
    print(
        "| round k | episodes | mean abs dz_v / step | p_v=0.5 crossings / ep | mean g "
        "| g < 0.1 | g > 1.9 | same three on successful episodes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for k, rs in sorted(rows.items()):
        ok = [r for r in rs if r["success"]]

        def m(key: str, sel: list[dict]) -> float:
            return float(np.nanmean([r[key] for r in sel])) if sel else float("nan")

        print(
            f"| {k} | {len(rs)} | {m('mean_abs_dz', rs):.3f} | {m('crossings', rs):.1f} "
            f"| {m('g_mean', rs):.2f} | {100 * m('g_below_0.1', rs):.1f} % "
            f"| {100 * m('g_above_1.9', rs):.1f} % | {m('g_mean', ok):.2f}, "
            f"{100 * m('g_below_0.1', ok):.1f} %, {100 * m('g_above_1.9', ok):.1f} % |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
