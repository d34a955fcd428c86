"""``habc-protocol``: the command line (``build_parser``, ``config_from_args``, ``main``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys

from habc_learner.protocol.config import (
    _METAWORLD,
    ALOHA_TASKS,
    DEFAULT_DEMO_CANDIDATES,
    DEFAULT_METHODS,
    DEFAULT_STEP2,
    NETWORKS,
    SFT_CRITERIA,
    TASK_DEFAULTS,
    Counters,
    ProtocolConfig,
    normalize_task,
)
from habc_learner.protocol.report import write_report
from habc_learner.protocol.run import resolve_demos, run_protocol


def build_parser() -> argparse.ArgumentParser:
    from habc_learner import protocol  # the package's docstring describes the protocol

    p = argparse.ArgumentParser(
        prog="habc-protocol",
        description=protocol.__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--task",
        default="transfer_cube",
        help=f"{' | '.join(ALOHA_TASKS)} | any Meta-World MT1 task (assembly-v3, ...)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="experiment seeds")
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        help="step-1 methods: learner registry names (sft, habc, ire_vla, ...), optionally with "
        "a variant suffix: habc+td (the paper's TD V_e target), habc+mc (Monte-Carlo V_e "
        "target), habc+online (TD from the online head), habc+batchmean (Eq. 1 averaged over "
        "the whole batch), habc+stride10 (one-step terms over 10 control steps)",
    )
    p.add_argument(
        "--demos",
        default=None,
        help="scripted demonstrations, or 'auto': tune their number into --band (default: the "
        "task's tuned value; 'auto' for a task without one)",
    )
    p.add_argument(
        "--demo-candidates",
        type=int,
        nargs="+",
        default=list(DEFAULT_DEMO_CANDIDATES),
        help="--demos auto: the numbers of demonstrations the tuner chooses from",
    )
    p.add_argument(
        "--band",
        type=float,
        nargs=2,
        default=[0.15, 0.50],
        metavar=("LO", "HI"),
        help="--demos auto: the SFT start's target success band",
    )
    p.add_argument(
        "--tune-episodes",
        type=int,
        default=20,
        help="--demos auto: tuning poses per probe (the cheap success estimate)",
    )
    p.add_argument(
        "--demo-noise",
        type=float,
        default=None,
        help="demo quality knob: expert noise σ (default: the task's tuned value)",
    )
    p.add_argument(
        "--sft-steps",
        type=int,
        default=None,
        help="SFT gradient steps: the cap when SFT runs to the plateau (--sft-patience > 0), "
        "else exactly these",
    )
    p.add_argument(
        "--sft-patience",
        type=int,
        default=5,
        help="SFT stops after this many held-out evaluations without a --sft-min-delta "
        "relative improvement of the flow loss on --val-demos held-out demonstrations "
        "(0: a fixed --sft-steps)",
    )
    p.add_argument(
        "--sft-criterion",
        choices=SFT_CRITERIA,
        default="success",
        help="what SFT's plateau is measured on: success on --tune-episodes validation poses "
        "of the seed, the flow loss or the sampled chunk's error on --val-demos held-out "
        "demonstrations",
    )
    p.add_argument(
        "--sft-validate-every",
        type=int,
        default=None,
        help="steps between SFT's held-out evaluations (default: 500 for success, else 100)",
    )
    p.add_argument("--sft-min-delta", type=float, default=0.01)
    p.add_argument("--val-demos", type=int, default=4, help="held-out demonstrations (SFT plateau)")
    p.add_argument(
        "--network",
        choices=sorted(NETWORKS),
        default="default",
        help="policy network size (small: feature 128, hidden 192, 2 blocks; 3.5-3.9x faster "
        "a learner step on a CPU)",
    )
    p.add_argument("--rounds", type=int, default=3, help="step-1 online rounds")
    p.add_argument("--rollouts", type=int, default=100, help="rollout episodes per round")
    p.add_argument("--round-steps", type=int, default=6000, help="gradient steps per round")
    p.add_argument(
        "--takeover-fraction",
        type=float,
        default=0.5,
        help="share of failing rollouts the scripted operator takes over",
    )
    p.add_argument(
        "--rollout-steps",
        type=int,
        default=None,
        help="step limit of rollout episodes (default: the task's evaluation limit)",
    )
    p.add_argument("--eval-episodes", type=int, default=50, help="evaluation episodes")
    p.add_argument("--step2-rounds", type=int, default=0, help="step-2 rounds (0: none)")
    p.add_argument("--step2-methods", nargs="+", default=list(DEFAULT_STEP2))
    p.add_argument("--step2-from", default="habc", help="step-1 method step 2 continues")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="override every method's g ≡ 1 warmup (default: the method's, 500)",
    )
    p.add_argument(
        "--efficiency-target",
        choices=("td", "mc"),
        default="mc",
        help="V_e target: the Monte-Carlo −(T_s − t) (default; see docs/results/README.md) "
        "or TD of Eq. 3 with a Polyak bootstrap (the paper's; also as the variant habc+td)",
    )
    p.add_argument("--trace-episodes", type=int, default=3)
    p.add_argument("--work", default="runs/protocol", help="bags, checkpoints, round records")
    p.add_argument("--out", default="docs/results", help="report root (<out>/<task>/)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--jobs", type=int, default=1, help="seeds in parallel processes")
    p.add_argument("--device", default="cpu", help="torch device of the learner (cpu, cuda)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report from the existing round records",
    )
    return p


def config_from_args(args: argparse.Namespace, command: str) -> ProtocolConfig:
    task = normalize_task(args.task)
    d = TASK_DEFAULTS.get(task, _METAWORLD)
    demos = args.demos if args.demos is not None else (d.demos if task in TASK_DEFAULTS else "auto")
    if str(demos) != "auto":
        try:
            demos = int(demos)
        except ValueError:
            raise ValueError(f"--demos must be an integer or 'auto', got {demos!r}") from None
    tune = demos == "auto"
    return ProtocolConfig(
        task=task,
        seeds=tuple(args.seeds),
        methods=tuple(args.methods),
        demos=max(args.demo_candidates) if tune else demos,
        demo_noise=args.demo_noise if args.demo_noise is not None else d.demo_noise,
        sft_steps=args.sft_steps if args.sft_steps is not None else d.sft_steps,
        sft_patience=args.sft_patience,
        sft_criterion=args.sft_criterion,
        sft_validate_every=args.sft_validate_every
        or (500 if args.sft_criterion == "success" else 100),
        sft_min_delta=args.sft_min_delta,
        val_demos=args.val_demos,
        tune_demos=tune,
        demo_candidates=tuple(args.demo_candidates),
        band=tuple(args.band),
        tune_episodes=args.tune_episodes,
        rounds=args.rounds,
        rollouts=args.rollouts,
        round_steps=args.round_steps,
        takeover_fraction=args.takeover_fraction,
        rollout_steps=args.rollout_steps,
        eval_episodes=args.eval_episodes,
        step2_rounds=args.step2_rounds,
        step2_methods=tuple(args.step2_methods),
        step2_from=args.step2_from,
        batch_size=args.batch_size,
        warmup_steps=args.warmup_steps,
        efficiency_target=args.efficiency_target,
        trace_episodes=args.trace_episodes,
        work=args.work,
        out=args.out,
        threads=args.threads,
        jobs=args.jobs,
        device=args.device,
        network=args.network,
        command=command,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "habc-protocol " + " ".join(shlex.quote(a) for a in argv)
    try:
        cfg = config_from_args(args, command)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("arx_x5_driver").setLevel(logging.ERROR)
    if args.report_only:
        report = write_report(resolve_demos(cfg, tune=False), None, Counters())
        print(f"wrote {report}")
        return 0
    counters, report = run_protocol(cfg)
    print(f"wrote {report} ({dataclasses.asdict(counters)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
