"""Critic options against each other on transfer-cube, on rollouts the critic never trained on.

For each data seed (the protocol's data path: scripted demos -> bags -> SFT -> rollouts of the
SFT policy with the scripted operator -> bags -> the bag reader):

1. ``--train-rollouts`` rollouts of the SFT policy (the protocol's round-1 poses) are the
   critic's training data (with the demonstrations), one HABC round of ``--steps`` learner
   steps from the SFT checkpoint per critic option;
2. ``--fresh-rollouts`` rollouts of the same SFT policy on fresh poses (another seed range)
   are never trained on: the critic is measured there.

Printed per option (and written to ``--json``): AUROC, ECE (10 bins) and Brier of p_v on the
fresh labeled windows; AUROC at the episode start; mean |Δz_v| per control step along fresh
episodes and the number of p_v = 0.5 crossings per episode; the gate on fresh successful
autonomous windows (mean g, share with g < 0.1 or g > 1.9); AUROC on the training windows;
the trainer's held-out validation figures; wall time. Example (the run in
``docs/results/critic.md``)::

    nice python bench/bench_critic.py --seeds 0 1 --train-rollouts 40 --fresh-rollouts 40 \\
        --steps 600 --json docs/results/critic.json

Numbers only, no asserts. Options are named critic configurations (:data:`OPTIONS`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("habc_policy", "habc_learner", "arx_x5_driver"):
    sys.path.insert(0, str(ROOT / "src" / pkg))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from habc_learner.core import calibration as cal  # noqa: E402
from habc_learner.core.critic import CriticConfig  # noqa: E402
from habc_learner.core.labeling import Source  # noqa: E402
from habc_learner.core.replay import ReplayStore  # noqa: E402
from habc_learner.core.weights import clamp_viability_logit  # noqa: E402

#: What every option starts from: the configuration before issue 13 (so the later change of
#: the defaults does not change what an option name measures).
BASE: dict[str, Any] = {
    "features": "actor_detached",
    "hidden_dim": 256,
    "num_layers": 2,
    "dropout": 0.0,
    "weight_decay": 0.0,
    "ensemble": 1,
    "validation_fraction": 0.2,
    "validate_every": 100,
    "early_stopping_patience": 0,
}
ES = {"early_stopping_patience": 3, "validate_every": 50}
ALL = {"weight_decay": 0.1, "dropout": 0.3, "ensemble": 5, **ES}
#: Named critic options: overrides of :data:`BASE`.
OPTIONS: dict[str, dict[str, Any]] = {
    name: {**BASE, **changes}
    for name, changes in {
        "actor_detached": {},
        "frozen_sft": {"features": "frozen_sft"},
        "own": {"features": "own"},
        "frozen_sft+wd": {"features": "frozen_sft", "weight_decay": 0.1},
        "frozen_sft+dropout": {"features": "frozen_sft", "dropout": 0.3},
        "frozen_sft+ens5": {"features": "frozen_sft", "ensemble": 5},
        "frozen_sft+es": {"features": "frozen_sft", **ES},
        "frozen_sft+small": {"features": "frozen_sft", "hidden_dim": 64, "num_layers": 1},
        "frozen_sft+all": {"features": "frozen_sft", **ALL},
        "actor_detached+es": dict(ES),
        "own+es": {"features": "own", **ES},  # the default since issue 13
        "own+all": {"features": "own", **ALL},
    }.items()
}
FRESH_ROUND = 8  # rollout_seed(seed, 8, i): poses no protocol round of <= 7 rounds uses


def prepare_data(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Demos, SFT checkpoint, training and fresh rollouts of one data seed (bags reused)."""
    from habc_learner import protocol as P
    from habc_policy.core.checkpoint import load_policy

    cfg = P.ProtocolConfig(
        task=args.task,
        seeds=(seed,),
        methods=("habc",),
        demos=args.demos,
        demo_noise=args.demo_noise,
        sft_steps=args.sft_steps,
        rounds=1,
        rollouts=args.train_rollouts,
        round_steps=args.steps,
        eval_episodes=args.sft_eval,
        work=args.work,
        threads=args.threads,
    )
    run = P.SeedRun(cfg, seed)
    run.root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    folder = run.root / "demos"
    run.record(
        folder,
        [P.demo_seed(seed, i) for i in range(cfg.demos)],
        source="demo",
        noise=cfg.demo_noise,
    )
    episodes = run.read(folder)
    run.demos = [e for e in episodes if e.outcome.value == "success"]
    run.dims = (run.demos[0].proprio_dim, run.demos[0].action_dim)
    sft = run.sft_start(len(episodes))
    sft_rec = run.load_record("sft_start", 0)
    policy = load_policy(sft)
    train_folder = run.rollout_folder("sft")
    run.record(
        train_folder,
        [P.rollout_seed(seed, 1, i) for i in range(args.train_rollouts)],
        policy=policy,
        source="rollout",
    )
    fresh_folder = run.root / "rollouts" / "sft_fresh"
    run.record(
        fresh_folder,
        [P.rollout_seed(seed, FRESH_ROUND, i) for i in range(args.fresh_rollouts)],
        policy=policy,
        source="rollout",
    )
    return {
        "run": run,
        "sft": sft,
        "sft_success": sft_rec["eval"]["success_rate"] if sft_rec else float("nan"),
        "train": run.read(train_folder),
        "fresh": run.read(fresh_folder),
        "data_s": time.monotonic() - t0,
    }


def trace_stats(out: dict[str, np.ndarray], took: np.ndarray) -> dict[str, float]:
    """Mean |Δz_v| per control step and p_v = 0.5 crossings per episode along every episode
    (consecutive anchors; logits clamped as in Eq. 5), over autonomous episodes."""
    z = out["z_v_clamped"]
    deltas, crossings, episodes = [], [], 0
    for e in np.unique(out["episode_index"]):
        if took[e]:
            continue
        m = out["episode_index"] == e
        order = np.argsort(out["anchor"][m])
        ze = z[m][order]
        if len(ze) < 2:
            continue
        episodes += 1
        deltas.append(np.abs(np.diff(ze)))
        crossings.append(int((np.diff(ze > 0) != 0).sum()))
    if not deltas:
        return {"mean_abs_dz": float("nan"), "crossings_per_episode": float("nan")}
    return {
        "mean_abs_dz": float(np.concatenate(deltas).mean()),
        "crossings_per_episode": float(np.mean(crossings)),
        "episodes": float(episodes),
    }


def gate_stats(g: np.ndarray) -> dict[str, float]:
    if not len(g):
        return {
            "n": 0,
            "mean": math.nan,
            "std": math.nan,
            "share_below_0.1": math.nan,
            "share_above_1.9": math.nan,
        }
    return {
        "n": len(g),
        "mean": float(g.mean()),
        "std": float(g.std()),
        "share_below_0.1": float((g < 0.1).mean()),
        "share_above_1.9": float((g > 1.9).mean()),
    }


def measure(
    trainer: Any, store: ReplayStore, temperatures: tuple[float, ...] = ()
) -> dict[str, Any]:
    """Calibration, traces and gate statistics of the trained critic over ``store``."""
    from habc_learner.protocol import critic_outputs

    rows = np.arange(len(store))
    out = critic_outputs(trainer, store, rows)
    out["z_v_clamped"] = clamp_viability_logit(torch.from_numpy(out["z_v"])).numpy()
    episodes = store.episodes
    took = np.array([bool(e.human_steps.any()) for e in episodes])
    ep, src = out["episode_index"], out["source"]
    lab = out["label"] >= 0
    res: dict[str, Any] = {
        "calibration": cal.calibration_summary(out["p_v"][lab], out["label"][lab])
    }
    first: dict[int, tuple[int, float, float]] = {}
    for i in np.flatnonzero(lab):
        e = int(ep[i])
        if e not in first or out["anchor"][i] < first[e][0]:
            first[e] = (int(out["anchor"][i]), float(out["p_v"][i]), float(out["label"][i]))
    if first:
        vals = np.array([v[1:] for v in first.values()])
        res["episode_start_auroc"] = cal.auroc(vals[:, 0], vals[:, 1])
    res.update(trace_stats(out, took))
    auto_succ = (src == Source.ROLLOUT_SUCCESS) & ~took[ep]
    res["gate"] = gate_stats(out["g"][auto_succ])
    # The advantage-temperature variant (not in the paper), recomputed from the same critic.
    p = out["p_v"]
    x = (1.0 - p) * out["a_v"]
    if trainer.method.train_efficiency:
        x = x + p * out["a_e"]
    for temp in temperatures:
        res[f"gate_T{temp:g}"] = gate_stats((1.0 + np.tanh(x / temp))[auto_succ])
    return res


def run_option(args: argparse.Namespace, data: dict[str, Any], name: str) -> dict[str, Any]:
    from habc_learner import protocol as P
    from habc_learner.core.trainer import Trainer

    run = data["run"]
    method = P.method_config(run.cfg, "habc").replace(warmup_steps=args.warmup)
    tcfg = run.trainer_config(method, "habc", args.steps)
    tcfg = dataclasses.replace(
        tcfg,
        critic=dataclasses.replace(tcfg.critic, **OPTIONS[name]),
        checkpoint_dir=str(run.root / "checkpoints" / f"critic_{name}"),
        log_dir=None,
    )
    store = ReplayStore(tcfg.replay_config())
    store.add_episodes(run.demos)
    store.add_episodes(data["train"])
    fresh = ReplayStore(tcfg.replay_config())
    fresh.add_episodes(data["fresh"])
    t0 = time.monotonic()
    torch.manual_seed(run.seed)
    with Trainer(tcfg, store) as trainer:
        trainer.init_policy_from(data["sft"])
        summary = trainer.run_round(args.steps)
        train_s = time.monotonic() - t0
        result = {
            "option": name,
            "seed": run.seed,
            "config": OPTIONS[name],
            "train_s": train_s,
            "validation": summary.validation,
            "fresh": measure(trainer, fresh, tuple(args.temperatures)),
            "train_windows": measure(trainer, store)["calibration"],
        }
    return result


def step_times(options: list[str], steps: int, rounds: int = 3) -> dict[str, float]:
    """Median learner step time (batch 256, state-only 14-dim bimanual, synthetic episodes)
    per option, options interleaved round by round so a shared machine's load hits all."""
    from habc_learner.core.episode import SCENARIOS, scenario_episode
    from habc_learner.core.trainer import Trainer, TrainerConfig
    from habc_policy.core.configuration_flow import FlowPolicyConfig

    trainers = {}
    for name in options:
        critic = dataclasses.replace(CriticConfig(), **OPTIONS[name])
        cfg = TrainerConfig(
            method="habc",
            policy=FlowPolicyConfig(action_dim=14, proprio_dim=15),
            critic=critic,
            batch_size=256,
            progress=False,
        )
        store = ReplayStore(cfg.replay_config())
        for i in range(24):
            store.add_episode(scenario_episode(SCENARIOS[i % len(SCENARIOS)], seed=i, length=300))
        trainers[name] = Trainer(cfg, store)
        trainers[name].train_step()  # warm up
    times: dict[str, list[float]] = {name: [] for name in options}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            times[name].append((time.perf_counter() - t0) / steps)
    return {name: float(np.median(v)) for name, v in times.items()}


def fmt(x: float, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| option | seed | AUROC | ECE | Brier | AUROC start | mean abs dz | crossings/ep "
        "| mean g | g<0.1 | g>1.9 | AUROC train | val AUROC | val ECE | train s |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in results:
        f, c, g, v = r["fresh"], r["fresh"]["calibration"], r["fresh"]["gate"], r["validation"]
        lines.append(
            f"| {r['option']} | {r['seed']} | {fmt(c['auroc'])} | {fmt(c['ece'])} | "
            f"{fmt(c['brier'])} | {fmt(f.get('episode_start_auroc', math.nan))} | "
            f"{fmt(f['mean_abs_dz'], 3)} | {fmt(f['crossings_per_episode'], 1)} | "
            f"{fmt(g['mean'])} | {fmt(g['share_below_0.1'])} | {fmt(g['share_above_1.9'])} | "
            f"{fmt(r['train_windows']['auroc'])} | {fmt(v.get('critic_val/auroc', math.nan))} | "
            f"{fmt(v.get('critic_val/ece', math.nan))} | {r['train_s']:.0f} |"
        )
    return "\n".join(lines)


def mean_table(results: list[dict[str, Any]]) -> str:
    """Per option, the mean over seeds of the headline figures (seeds in brackets)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        rows.setdefault(r["option"], []).append(r)
    lines = [
        "| option | seeds | AUROC | ECE | Brier | AUROC start | mean abs dz | mean g | g<0.1 "
        "| g>1.9 | val AUROC | val ECE |",
        "|" + "---|" * 12,
    ]
    for name, rs in rows.items():

        def m(get: Any, rs: list[dict[str, Any]] = rs) -> float:
            return float(np.nanmean([get(r) for r in rs]))

        cal_ = [lambda r, k=k: r["fresh"]["calibration"][k] for k in ("auroc", "ece", "brier")]
        lines.append(
            f"| {name} | {','.join(str(r['seed']) for r in rs)} | "
            + " | ".join(fmt(m(f)) for f in cal_)
            + f" | {fmt(m(lambda r: r['fresh'].get('episode_start_auroc', math.nan)))}"
            + f" | {fmt(m(lambda r: r['fresh']['mean_abs_dz']), 3)}"
            + f" | {fmt(m(lambda r: r['fresh']['gate']['mean']))}"
            + f" | {fmt(m(lambda r: r['fresh']['gate']['share_below_0.1']))}"
            + f" | {fmt(m(lambda r: r['fresh']['gate']['share_above_1.9']))}"
            + f" | {fmt(m(lambda r: r['validation'].get('critic_val/auroc', math.nan)))}"
            + f" | {fmt(m(lambda r: r['validation'].get('critic_val/ece', math.nan)))} |"
        )
    return "\n".join(lines)


def plot_reliability(results: list[dict[str, Any]], options: list[str], path: Path) -> None:
    """Reliability curves (mean outcome against mean p_v per bin) on the fresh rollouts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({r["seed"] for r in results})
    fig, axes = plt.subplots(1, len(seeds), figsize=(4.5 * len(seeds), 4.2), squeeze=False)
    for ax, seed in zip(axes[0], seeds):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
        for r in results:
            if r["seed"] != seed or r["option"] not in options:
                continue
            c = r["fresh"]["calibration"]
            mp, my = np.array(c["bin_mean_p"], float), np.array(c["bin_mean_y"], float)
            ok = np.isfinite(mp) & np.isfinite(my)
            ax.plot(
                mp[ok],
                my[ok],
                marker="o",
                ms=3,
                label=f"{r['option']} (ECE {c['ece']:.2f}, AUROC {c['auroc']:.2f})",
            )
        ax.set_title(f"transfer-cube seed {seed}: fresh rollouts", fontsize=9)
        ax.set_xlabel("p_v (bin mean)")
        ax.set_ylabel("success rate")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="transfer_cube")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--demos", type=int, default=20)
    parser.add_argument("--demo-noise", type=float, default=0.01)
    parser.add_argument("--sft-steps", type=int, default=1000)
    parser.add_argument("--sft-eval", type=int, default=10)
    parser.add_argument("--train-rollouts", type=int, default=40)
    parser.add_argument("--fresh-rollouts", type=int, default=40)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[1.0, 2.0, 4.0],
        help="advantage temperatures T for the gate statistics (1: the paper's Eq. 7)",
    )
    parser.add_argument("--work", default="runs/bench_critic")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument(
        "--timing",
        type=int,
        default=0,
        metavar="STEPS",
        help="only time STEPS learner steps per option (synthetic data) and exit",
    )
    parser.add_argument(
        "--report",
        nargs="+",
        default=None,
        metavar="JSON",
        help="only print the tables of earlier --json files (and --plot) and exit",
    )
    parser.add_argument("--plot", default=None, help="reliability diagram PNG of --options")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    if args.report:
        results = [r for f in args.report for r in json.loads(Path(f).read_text())]
        print(table(results) + "\n\n" + mean_table(results))
        if args.plot:
            plot_reliability(results, args.options, Path(args.plot))
        return 0
    if args.timing:
        for name, sec in step_times(args.options, args.timing).items():
            print(f"{name}: {1000 * sec:.0f} ms per learner step (batch 256)")
        return 0
    results = []
    for seed in args.seeds:
        data = prepare_data(args, seed)
        print(
            f"seed {seed}: SFT success {fmt(100 * data['sft_success'], 0)} %, "
            f"{len(data['train'])} training and {len(data['fresh'])} fresh rollouts "
            f"({sum(e.outcome.value == 'success' for e in data['fresh'])} fresh successes), "
            f"data {data['data_s']:.0f} s",
            flush=True,
        )
        for name in args.options:
            r = run_option(args, data, name)
            r["sft_success"] = data["sft_success"]
            results.append(r)
            print(table([r]).splitlines()[-1], flush=True)
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    print()
    print(table(results))
    print()
    print(mean_table(results))
    if args.plot:
        plot_reliability(results, args.options, Path(args.plot))
    print(f"\nwall {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
