"""Vision SFT curve on transfer-cube: success against gradient steps and wall time.

    source env.sh && python bench/bench_vision_sft.py --out runs/vision_sft \\
        [--demos 20] [--cameras top,left_wrist,right_wrist] [--image-size 96] \\
        [--eval-at 250 500 1000 1500] [--eval-episodes 10] [--batch-size 64] [--threads 2]

Scripted demonstrations rendered by the simulator (cameras at ``--image-size``), read back
through the learner's image cache with joints-only proprioception (no privileged state), SFT
of an image policy; at every ``--eval-at`` step the checkpoint is evaluated in-process on
held-out object poses (cameras + joints, no takeover). Prints a table and writes
``<out>/curve.json``; asserts nothing. The same script runs on a GPU with ``--device cuda``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/vision_sft"))
    p.add_argument("--task", default="transfer_cube")
    p.add_argument("--demos", type=int, default=20)
    p.add_argument("--cameras", default="top,left_wrist,right_wrist")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--eval-at", type=int, nargs="+", default=[250, 500, 1000, 1500])
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from habc_learner.core.bag_reader import read_episodes
    from habc_learner.core.image_cache import ImageCache
    from habc_learner.core.replay import ReplayStore
    from habc_learner.core.trainer import Trainer, TrainerConfig
    from habc_learner.main_job import evaluate, record_episodes
    from habc_policy.core.configuration_flow import FlowPolicyConfig

    cams = tuple(c for c in args.cameras.split(",") if c)
    size = (args.image_size, args.image_size)
    run = argparse.Namespace(
        backend="sim",
        task=args.task,
        cameras=cams,
        camera_size=size,
        eval_episodes=args.eval_episodes,
    )
    t0 = time.monotonic()
    record_episodes(run, args.out / "demos", list(range(args.demos)), source="demo", desc="demos")
    t_demos = time.monotonic() - t0
    demos, _ = read_episodes(
        args.out / "demos",
        use_env_state=False,
        cameras=cams,
        image_cache=ImageCache(args.out / "image_cache"),
        image_size=size,
    )
    demos = [e for e in demos if e.outcome.value == "success"]
    policy = FlowPolicyConfig(
        action_dim=demos[0].action_dim,
        proprio_dim=demos[0].proprio_dim,
        camera_names=cams,
        image_size=size,
        image_augment="shift",
    )
    config = TrainerConfig(
        method="sft",
        policy=policy,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        checkpoint_dir=str(args.out / "checkpoints"),
        progress=False,
    )
    store = ReplayStore(config.replay_config())
    store.add_episodes(demos)
    trainer = Trainer(config, store)
    print(
        f"{len(demos)}/{args.demos} successful demos recorded in {t_demos:.0f} s; SFT of a "
        f"{len(cams)}-camera {size[0]}² policy (joints-only proprio), batch {args.batch_size}, "
        f"{args.threads} thread(s), {args.device}",
        flush=True,
    )
    rows = []
    train_s = 0.0
    for target in sorted(args.eval_at):
        t1 = time.monotonic()
        summary = trainer.run_round(target - trainer.learner_step)
        train_s += time.monotonic() - t1
        t2 = time.monotonic()
        result = evaluate(run, summary.checkpoint, f"step {target}")
        row = {
            "step": target,
            "train_wall_s": round(train_s, 1),
            "s_per_step": round(train_s / target, 3),
            "actor_loss": round(summary.means.get("loss/actor", float("nan")), 4),
            "success": result.success_rate,
            "eval_wall_s": round(time.monotonic() - t2, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "curve.json").write_text(
            json.dumps({"args": vars(args), "rows": rows}, default=str, indent=1)
        )
    trainer.close()
    print("\n| gradient steps | training wall time | actor loss | held-out success |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['step']} | {r['train_wall_s'] / 60:.1f} min | {r['actor_loss']} | "
            f"{100 * r['success']:.0f} % ({args.eval_episodes} episodes) |"
        )


if __name__ == "__main__":
    main()
