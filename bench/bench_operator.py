"""Scripted-operator competence: how well the HG-DAgger stand-in corrects a given policy.

Runs ``--episodes`` in-process rollouts of a checkpoint with the operator watching (every
failing episode is a candidate: ``--intervention-rate 1``) and prints, measured in this run:

- the policy's autonomous success over the same poses without an operator (``--baseline``);
- takeover episodes, how many of them end in success (target: >= 90 %), how many keep a
  post-takeover policy suffix of >= 50 steps (target: >= 60 %), hand-backs, one-arm
  takeovers, re-takeovers, and the scenes it declined as unrecoverable;
- per takeover, the corrections that reached their goal (handed back on track, or held to the
  end of a successful episode): the operator's own competence, apart from the policy's
  failures after a hand-back.

Example (a transfer-cube SFT checkpoint in the 15-50 % band)::

    python bench/bench_operator.py --task transfer_cube \\
        --checkpoint runs/protocol/transfer_cube/seed0/checkpoints/sft_start/step_000001000 \\
        --episodes 100
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("habc_policy", "habc_learner", "arx_x5_driver"):
    sys.path.insert(0, str(ROOT / "src" / pkg))

import numpy as np  # noqa: E402

SEED_BASE = 7_000_000  # poses no demonstration, rollout or evaluation seed uses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="transfer_cube")
    p.add_argument("--checkpoint", type=Path, required=True, help="policy checkpoint folder")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--intervention-rate", type=float, default=1.0)
    p.add_argument("--release", choices=("on", "off"), default="on", help="hand back or not")
    p.add_argument("--one-arm", choices=("on", "off"), default="on")
    p.add_argument("--baseline", action="store_true", help="also run without the operator")
    p.add_argument("--max-steps", type=int, default=None, help="episode limit (task default)")
    p.add_argument("--list", action="store_true", help="one line per takeover episode")
    p.add_argument("--handback-level", type=int, default=None, help="(default: the task's)")
    p.add_argument(
        "--handback-ticks",
        type=int,
        default=None,
        help="the arbiter's hand-back ramp (ticks; default: the arbiter's)",
    )
    p.add_argument(
        "--lift-clear", type=float, default=None, help="'lifted clear' in m (the task's)"
    )
    p.add_argument(
        "--pick-handback",
        choices=("grasp", "lift"),
        default=None,
        help="a one-arm takeover of a picking arm hands back at the grasp or the lift "
        "(default: the operator's)",
    )
    p.add_argument("--max-takeovers", type=int, default=None, help="(default: the operator's)")
    p.add_argument(
        "--min-suffix-steps",
        type=int,
        default=None,
        help="hand back only with at least this many steps left (default: the operator's)",
    )
    p.add_argument(
        "--handback-stall-steps",
        type=int,
        default=None,
        help="stall window right after a hand-back (default: the operator's)",
    )
    p.add_argument(
        "--nut-recovery",
        choices=("on", "off"),
        default="on",
        help="assembly-v3: the pose-aware nut controller for a nut moved out of its spawn "
        "pose (off: the shipped policy after a retreat, the operator before)",
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from arx_x5_driver.core.factory import make_backend
    from habc_learner.protocol import backend_of
    from habc_policy.core.checkpoint import load_policy
    from habc_sim.core.operator import OperatorConfig, ScriptedOperator
    from habc_sim.core.rollouts import run_rollout

    backend = backend_of(args.task)
    policy = load_policy(args.checkpoint)
    overrides = {
        k: v
        for k, v in (
            ("pick_handback", args.pick_handback),
            ("max_takeovers", args.max_takeovers),
            ("handback_stall_steps", args.handback_stall_steps),
            ("min_suffix_steps", args.min_suffix_steps),
        )
        if v is not None
    }
    config = OperatorConfig(
        intervention_rate=args.intervention_rate,
        release=args.release == "on",
        one_arm=args.one_arm == "on",
        handback_level=args.handback_level,
        lift_clear=args.lift_clear,
        **overrides,
    )
    operator = ScriptedOperator.for_backend(backend, args.task, config)
    if args.nut_recovery == "off" and hasattr(operator.expert, "nut_recovery"):
        operator.expert.nut_recovery = False
    seeds = [SEED_BASE + i for i in range(args.episodes)]
    t0 = time.monotonic()
    results, baseline, timelines = [], [], []
    limits = {} if args.max_steps is None else {"max_steps": args.max_steps}
    with make_backend(backend, task=args.task, **limits) as robot:
        for seed in seeds:
            # The same pose and sampling noise with the operator watching, and (--baseline)
            # without it.
            for watched in (True, False) if args.baseline else (True,):
                r = run_rollout(
                    robot,
                    seed=seed,
                    policy=policy,
                    operator=operator if watched else None,
                    episode_id=f"{'op' if watched else 'base'}-{seed}",
                    task=args.task,
                    prompt=robot.prompt,
                    sample_seed=seed,
                    handback_ticks=args.handback_ticks,
                )
                if watched:
                    results.append(r)
                    timelines.append(
                        (
                            list(operator.takeover_steps),
                            list(operator.release_steps),
                            list(operator.takeover_reasons),
                            list(operator.takeover_levels),
                        )
                    )
                else:
                    baseline.append(r.success)
    wall = time.monotonic() - t0

    took = [r for r in results if r.takeovers > 0]
    if args.list:
        for r, (ts, rs, why, lv) in zip(results, timelines):
            if r.takeovers:
                print(
                    f"{r.episode_id}: {'success' if r.success else 'failure'} at {r.steps}, "
                    f"takeovers {ts} ({', '.join(why)}; levels {lv}), hand-backs {rs}, "
                    f"suffix {r.suffix_steps}, {r.operator_reason}"
                )
    declined = sum((r.operator_reason or "").startswith("unrecoverable") for r in results)
    n = len(took)

    from habc_policy.core.authority import DEFAULT_HANDBACK_TICKS

    ramp = DEFAULT_HANDBACK_TICKS if args.handback_ticks is None else args.handback_ticks

    def pct(k: int, d: int) -> str:
        return f"{k}/{d} ({100 * k / d:.0f} %)" if d else "0/0"

    print(f"task {args.task}, checkpoint {policy.checkpoint_id} (step {policy.learner_step})")
    print(
        f"operator: intervention rate {args.intervention_rate}, hand-back {args.release}, "
        f"one-arm {args.one_arm}, pick hand-back: {config.pick_handback}, "
        f"at most {config.max_takeovers} takeovers, ramp {ramp} ticks; "
        f"{len(results)} episodes in {wall:.0f} s "
        f"({wall / max(len(results), 1):.2f} s per episode)"
    )
    if baseline:
        print(f"policy alone, same poses:         {pct(sum(baseline), len(baseline))}")
    print(f"episodes with the operator:       {pct(sum(r.success for r in results), len(results))}")
    print(
        f"  autonomous successes:           {sum(r.success and not r.takeovers for r in results)}"
    )
    print(f"takeover episodes:                {n}")
    print(f"  ending in success:              {pct(sum(r.success for r in took), n)}")
    print(f"  with a policy suffix >= 50:     {pct(sum(r.suffix_steps >= 50 for r in took), n)}")
    print(f"  with any policy suffix:         {pct(sum(r.suffix_steps > 0 for r in took), n)}")
    print(
        "  suffix steps (mean, median):    "
        f"{np.mean([r.suffix_steps for r in took]) if took else 0:.0f}, "
        f"{np.median([r.suffix_steps for r in took]) if took else 0:.0f}"
    )
    print(f"  hand-backs:                     {sum(r.handbacks for r in took)}")
    # Per takeover: a correction reaches its goal when the operator hands back on track, or,
    # for one held to the end, when the episode succeeds. (A policy failing after a hand-back
    # fails the episode, not the correction.)
    corrections = sum(len(ts) for ts, *_ in timelines)
    handed = sum(len(rs) for _ts, rs, *_ in timelines)
    held = [r for r, (ts, rs, *_) in zip(results, timelines) if len(rs) < len(ts)]
    held_ok = sum(r.success for r in held)
    print(f"  corrections reaching their goal: {pct(handed + held_ok, corrections)}")
    print(f"  held to the end, then success:  {pct(held_ok, len(held))}")
    per_episode = dict(sorted(Counter(r.takeovers for r in took).items()))
    print(f"  takeovers per episode:          {per_episode}")
    with_suffix = [r for r in took if r.suffix_steps > 0]
    suffix_ok = sum(r.success for r in with_suffix)
    print(f"  suffix success (had a suffix):  {pct(suffix_ok, len(with_suffix))}")
    print(f"declined as unrecoverable:        {declined}")
    first = Counter(why[0] for (_ts, _rs, why, _lv) in timelines if why)
    again = Counter(w for (_ts, _rs, why, _lv) in timelines for w in why[1:])
    print(f"first takeover reasons:           {dict(first)}")
    print(f"re-takeover reasons:              {dict(again)}")
    # The scene's milestone level as each takeover began (0: before the task's first
    # milestone, e.g. the grasp-and-lift): a takeover past the last milestone runs to the end.
    first_level = Counter(lv[0] for (_ts, _rs, _why, lv) in timelines if lv)
    again_level = Counter(v for (_ts, _rs, _why, lv) in timelines for v in lv[1:])
    print(f"first takeovers by level:         {dict(sorted(first_level.items()))}")
    print(f"re-takeovers by level:            {dict(sorted(again_level.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
