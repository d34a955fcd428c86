"""Data-parallel learner benchmark: scaling efficiency from 1 to 2 ranks (DDP), per policy.

For each policy (the default-size state policy; the 3-camera image policy at 96×96) this runs
real HABC learner steps (:meth:`Trainer.train_step`: sampling, actor + critic forward/backward,
DDP gradient all-reduce, optimizer steps) on W = 1 and W = 2 processes joined in a gloo
process group, each with ``--threads`` torch threads and per-rank batch B, and prints

    throughput(W) = W · B · steps / wall time        (windows per second)
    efficiency    = throughput(2) / (2 · throughput(1))

With ``--device cuda`` (one process per GPU, NCCL) it measures on GPUs instead; ``--single-gpu``
prints the one-process GPU throughput only. Prints the figures measured in this run::

    source env.sh && python bench/bench_ddp.py --steps 20
    python bench/bench_ddp.py --device cuda --single-gpu --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAMERAS = ("top", "left_wrist", "right_wrist")
POLICIES = {"state": (), "image_3cam": CAMERAS}


def _trainer(policy: str, batch: int, device: str, dist: object) -> object:
    from habc_learner.core.critic import CriticConfig
    from habc_learner.core.episode import SCENARIOS, scenario_episode
    from habc_learner.core.replay import ReplayStore
    from habc_learner.core.trainer import Trainer, TrainerConfig
    from habc_policy.core.configuration_flow import FlowPolicyConfig

    cameras = POLICIES[policy]
    config = TrainerConfig(
        method="habc",
        policy=FlowPolicyConfig(proprio_dim=15, camera_names=cameras, image_augment="shift"),
        critic=CriticConfig(validation_fraction=0.0, early_stopping_patience=0),
        batch_size=batch,
        progress=False,
        device=dist.device(device),
    )
    store = ReplayStore(config.replay_config())
    for seed, scenario in enumerate(SCENARIOS * 2):
        store.add_episode(
            scenario_episode(scenario, seed=seed, length=120, cameras=cameras, image_size=(96, 96))
        )
    return Trainer(config, store, dist)


def _rank(rank: int, world: int, port: int, args: dict, result: str) -> None:
    import torch

    from habc_learner.core import distributed as D

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(args["threads"])
    ctx = D.init(args["device"], timeout_s=1800) if world > 1 else D.SINGLE
    trainer = _trainer(args["policy"], args["batch"], args["device"], ctx)
    for _ in range(args["warmup"]):
        trainer.train_step()
    sync = args["device"].startswith("cuda")
    if world > 1:
        torch.distributed.barrier()
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args["steps"]):
        trainer.train_step()
    if sync:
        torch.cuda.synchronize()
    if world > 1:
        torch.distributed.barrier()
    wall = time.perf_counter() - t0
    comm: dict[str, float] = {}
    if world > 1:  # what a step's communication costs on its own, without the compute
        params = [p for m in trainer._trainable_modules().values() for p in m.parameters()]
        flat = torch.zeros(sum(p.numel() for p in params if p.requires_grad))
        info = trainer.train_step()
        for name, fn in (
            ("allreduce_ms", lambda: torch.distributed.all_reduce(flat)),
            ("scalars_ms", lambda: D.mean_over_ranks(ctx, info)),
        ):
            torch.distributed.barrier()
            t = time.perf_counter()
            for _ in range(args["steps"]):
                fn()
            comm[name] = (time.perf_counter() - t) / args["steps"] * 1e3
        comm["params"] = float(flat.numel())
    if rank == 0:
        Path(result).write_text(json.dumps({"wall_s": wall, **comm}))
    D.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, args: dict) -> dict[str, float]:
    """``rate`` (windows per second of ``world`` ranks, wall time of the timed steps on rank 0),
    ``step_ms``; with 2 ranks also the cost of one gradient-sized gloo all-reduce and of the
    logged scalars' exchange, measured alone."""
    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "result.json")
        if world == 1:
            _rank(0, 1, 0, args, result)
        else:
            mp.start_processes(
                _rank,
                args=(world, _free_port(), args, result),
                nprocs=world,
                join=True,
                start_method="spawn",
            )
        measured = json.loads(Path(result).read_text())
    measured["rate"] = world * args["batch"] * args["steps"] / measured["wall_s"]
    measured["step_ms"] = measured["wall_s"] / args["steps"] * 1e3
    return measured


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed learner steps per measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--state-batch", type=int, default=64, help="per-rank batch, state policy")
    p.add_argument("--image-batch", type=int, default=16, help="per-rank batch, image policy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--single-gpu", action="store_true", help="1 process on 1 GPU only")
    p.add_argument("--policies", default="state,image_3cam")
    args = p.parse_args()
    print(
        f"== DDP scaling: habc learner steps, {args.steps} timed (+{args.warmup} warmup), "
        f"{args.threads} torch thread(s) per rank, device {args.device}, "
        f"{os.cpu_count()} CPU cores visible, load average {os.getloadavg()[0]:.1f}"
    )
    for policy in args.policies.split(","):
        batch = args.state_batch if policy == "state" else args.image_batch
        common = {
            "policy": policy,
            "batch": batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "threads": args.threads,
            "device": args.device,
        }
        t0 = time.perf_counter()
        one = measure(1, common)
        if args.single_gpu:
            print(f"{policy:>10}: 1 process, batch {batch}: {one['rate']:8.1f} windows/s")
            continue
        two = measure(2, common)
        print(
            f"{policy:>10}: batch {batch}/rank | 1 rank {one['rate']:8.1f} windows/s "
            f"({one['step_ms']:.0f} ms/step) | 2 ranks {two['rate']:8.1f} windows/s "
            f"({two['step_ms']:.0f} ms/step) | efficiency {two['rate'] / (2 * one['rate']):.2f} | "
            f"alone: all-reduce of {two['params'] / 1e6:.2f} M grads {two['allreduce_ms']:.1f} ms, "
            f"scalars {two['scalars_ms']:.1f} ms "
            f"({time.perf_counter() - t0:.0f} s, load average now {os.getloadavg()[0]:.1f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
