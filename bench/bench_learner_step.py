"""Profile of one HABC learner step at batch 256, and what a smaller network, the thread count
and ``torch.compile`` buy.

Every case is measured in this one run on the same synthetic store (state-only, d = 14,
H = 50, 32 scenario episodes of 300 steps), and the ratios against the default case are
printed beside the times, so a loaded machine shifts all cases alike. Example::

    python bench/bench_learner_step.py --steps 30 --profile-steps 20

Cases:
- ``default``: the shipped ``FlowPolicyConfig`` (feature 256, hidden 384, 4 blocks), 1 thread;
- ``threads=N``: the same with ``torch.set_num_threads(N)``;
- ``small``: feature 128, hidden 192, 2 blocks, 1 thread;
- ``compile``: the default network with the actor's encoder, action expert and the critic
  wrapped in ``torch.compile`` (compile time reported separately), 1 thread.

Then a cProfile of the default case (top functions by own time) and a ``torch.profiler``
table of the operators (top by self CPU time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("habc_policy", "habc_learner"):
    sys.path.insert(0, str(ROOT / "src" / pkg))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from bench_learner import build_store  # noqa: E402

from habc_learner.core.trainer import Trainer, TrainerConfig  # noqa: E402
from habc_policy.core.configuration_flow import FlowPolicyConfig  # noqa: E402

SMALL = {"feature_dim": 128, "hidden_dim": 192, "num_blocks": 2}


def make_trainer(small: bool, batch: int) -> Trainer:
    policy = FlowPolicyConfig(action_dim=14, proprio_dim=15, **(SMALL if small else {}))
    config = TrainerConfig(method="habc", policy=policy, batch_size=batch, progress=False)
    return Trainer(config, build_store(config, episodes=32, length=300))


def compile_trainer(trainer: Trainer) -> None:
    """Wrap the step's modules in ``torch.compile`` (the trainer calls them as modules)."""
    trainer.policy.encoder = torch.compile(trainer.policy.encoder)
    trainer.policy.expert = torch.compile(trainer.policy.expert)
    if trainer.critic_encoder is not None:
        trainer.critic_encoder = torch.compile(trainer.critic_encoder)


def time_steps(trainer: Trainer, steps: int, warmup: int) -> tuple[float, float]:
    """(ms per step, seconds of the warmup steps)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step()
    warm_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return 1000 * (time.perf_counter() - t1) / steps, warm_s


def params(trainer: Trainer) -> float:
    n = sum(p.numel() for p in trainer.policy.parameters())
    if trainer.critic_encoder is not None:
        n += sum(p.numel() for p in trainer.critic_encoder.parameters())
    if trainer.critic is not None:
        n += sum(p.numel() for p in trainer.critic.parameters())
    return n / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per case")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="extra thread cases")
    parser.add_argument("--profile-steps", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile case")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
        f"batch {args.batch}, method habc (own critic encoder), {args.steps} timed steps per case"
    )
    rows: list[tuple[str, float, float, str]] = []
    torch.set_num_threads(1)
    base = make_trainer(False, args.batch)
    ms, _ = time_steps(base, args.steps, args.warmup)
    rows.append(("default, 1 thread", ms, params(base), ""))
    for n in args.threads:
        torch.set_num_threads(n)
        ms_n, _ = time_steps(base, args.steps, args.warmup)
        rows.append((f"default, {n} threads", ms_n, params(base), ""))
    torch.set_num_threads(1)
    small = make_trainer(True, args.batch)
    ms_s, _ = time_steps(small, args.steps, args.warmup)
    rows.append((f"small {SMALL}, 1 thread", ms_s, params(small), ""))
    if not args.no_compile:
        comp = make_trainer(False, args.batch)
        compile_trainer(comp)
        try:
            ms_c, warm_s = time_steps(comp, args.steps, args.warmup)
            rows.append(
                (
                    "default + torch.compile, 1 thread",
                    ms_c,
                    params(comp),
                    f"first {args.warmup} steps (compile) {warm_s:.1f} s",
                )
            )
        except Exception as exc:  # the compile toolchain is part of what is measured
            rows.append(
                (
                    "default + torch.compile, 1 thread",
                    float("nan"),
                    params(comp),
                    f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
                )
            )
    # Recheck the default at the end: the machine's load drifts during the run.
    ms_end, _ = time_steps(base, args.steps, 0)
    rows.append(("default, 1 thread (again, at the end)", ms_end, params(base), ""))
    ref = (ms + ms_end) / 2
    print(f"\n{'case':<58} {'ms/step':>8} {'× default':>10} {'M params':>9}")
    for name, t, p, note in rows:
        print(f"{name:<58} {t:8.1f} {ref / t:10.2f} {p:9.2f}  {note}")

    # cProfile: where the default step's time goes (own time of Python functions).
    torch.set_num_threads(1)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.profile_steps):
        base.train_step()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
    print(f"\ncProfile, {args.profile_steps} default steps, top 15 by own time:")
    print("\n".join(s.getvalue().splitlines()[4:30]))
    # torch.profiler: operator table.
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as tp:
        for _ in range(args.profile_steps):
            base.train_step()
    print(f"torch.profiler, {args.profile_steps} default steps, top 15 operators by self CPU:")
    print(tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    t0 = time.perf_counter()
    for _ in range(5):
        base.store.sample(args.batch, base.method.mixing_dict, base.rng, next_images=True)
    print(f"batch sampling alone: {1000 * (time.perf_counter() - t0) / 5:.1f} ms per batch")


if __name__ == "__main__":
    main()
