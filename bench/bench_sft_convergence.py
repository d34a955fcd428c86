"""SFT to convergence: closed-loop success against the held-out losses, step by step.

Trains SFT on one seed's first ``--demos`` scripted demonstrations (the protocol's seeds and
poses; recorded if missing), and at each of ``--at`` steps saves the policy, rolls it out on
``--eval-episodes`` of the seed's evaluation poses (in-process, no takeovers) and computes two
held-out losses on the seed's held-out demonstrations: Eq. 1's flow loss (fixed ε, τ) and the
sampled chunk's squared error (fixed noise). Prints one row per checkpoint and the step where
each measure was best, so a person can see which measure's plateau says "converged"::

    python bench/bench_sft_convergence.py --task transfer_cube --seed 0 --demos 12 \\
        --network small --at 300 600 1000 2000 3000 4500 6000 8000 --eval-episodes 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("habc_policy", "habc_learner", "habc_sim", "arx_x5_driver", "habc_common"):
    sys.path.insert(0, str(ROOT / "src" / pkg))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="transfer_cube")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--demos", type=int, default=12, help="demonstrations recorded (successful used)"
    )
    p.add_argument("--network", default="small", choices=("default", "small"))
    p.add_argument("--at", type=int, nargs="+", default=[300, 600, 1000, 2000, 3000, 4500, 6000])
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--val-demos", type=int, default=4)
    p.add_argument("--work", default="runs/bench_sft_convergence")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    if sorted(set(args.at)) != args.at or args.at[0] < 1:
        p.error("--at must be increasing positive steps")

    import torch

    torch.set_num_threads(1)
    from habc_learner.core.replay import ReplayStore
    from habc_learner.core.sft_convergence import HeldOutActionError, HeldOutFlowLoss
    from habc_learner.core.trainer import Trainer
    from habc_learner.protocol.config import (
        _METAWORLD,
        TASK_DEFAULTS,
        ProtocolConfig,
        normalize_task,
    )

    task = normalize_task(args.task)
    noise = TASK_DEFAULTS.get(task, _METAWORLD).demo_noise
    cfg = ProtocolConfig(
        task=task, seeds=(args.seed,), network=args.network, demo_noise=noise,
        val_demos=args.val_demos, eval_episodes=args.eval_episodes, work=args.work, out=args.work,
    )  # fmt: skip
    from habc_learner.protocol.run import SeedRun

    run = SeedRun(cfg, args.seed)
    demos, recorded = run.demo_episodes(args.demos)
    val = run.val_demo_episodes()
    run.demos, run.dims = demos, (demos[0].proprio_dim, demos[0].action_dim)
    tcfg = run.trainer_config("sft", f"convergence_{args.network}_{len(demos)}", args.at[-1])
    store = ReplayStore(tcfg.replay_config())
    store.add_episodes(demos)
    vstore = ReplayStore(tcfg.replay_config())
    vstore.add_episodes(val)
    print(
        f"== SFT convergence: {task} seed {args.seed}, {len(demos)}/{recorded} successful "
        f"demonstrations, {len(val)} held out, network {args.network}, "
        f"{args.eval_episodes} evaluation poses per checkpoint",
        flush=True,
    )
    print("| step | success | held-out flow loss | held-out chunk error | wall s |")
    print("|---|---|---|---|---|")
    rows = []
    t_all = time.monotonic()
    with Trainer(tcfg, store) as trainer:
        flow = HeldOutFlowLoss(trainer, vstore, seed=args.seed)
        chunk = HeldOutActionError(trainer, vstore, seed=args.seed)
        done = 0
        for step in args.at:
            t0 = time.monotonic()
            trainer.run_round(step - done)
            done = step
            ev = run.evaluate(trainer.save_checkpoint())
            row = {
                "step": step,
                "success": ev["success_rate"],
                "flow": flow(),
                "chunk_error": chunk(),
                "wall_s": time.monotonic() - t0,
            }
            rows.append(row)
            print(
                f"| {step} | {100 * row['success']:.0f} % | {row['flow']:.4f} | "
                f"{row['chunk_error']:.4f} | {row['wall_s']:.0f} |",
                flush=True,
            )
    best = {
        "success": max(rows, key=lambda r: r["success"])["step"],
        "flow": min(rows, key=lambda r: r["flow"])["step"],
        "chunk_error": min(rows, key=lambda r: r["chunk_error"])["step"],
    }
    print(
        f"best step: success {best['success']}, flow loss {best['flow']}, chunk error "
        f"{best['chunk_error']}; {time.monotonic() - t_all:.0f} s wall"
    )
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
