"""The three mechanism experiments (viability, efficiency, credit) of
:mod:`habc_learner.core.mechanisms`: each figure per method, mean and range over seeds.

    nice python bench/bench_mechanisms.py --seeds 0 1 2

Numbers only, no asserts (``tests/learner/test_mechanisms.py`` asserts the directions at a
smaller size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("habc_policy", "habc_learner"):
    sys.path.insert(0, str(ROOT / "src" / pkg))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from habc_learner.core import mechanisms as M  # noqa: E402

EXPERIMENTS = {
    "viability": (M.run_viability, ("uniform_bc", "habc_v", "habc")),
    "efficiency": (M.run_efficiency, ("uniform_bc", "habc_v", "habc")),
    "credit": (
        M.run_credit,
        ("uniform_bc+naive", "uniform_bc", "habc_v+naive", "habc_v", "habc+naive", "habc"),
    ),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    p.add_argument("--episodes", type=int, default=M.MechanismConfig.episodes)
    p.add_argument("--train-steps", type=int, default=M.MechanismConfig.train_steps)
    p.add_argument("--p-viable", type=float, default=M.MechanismConfig.p_viable)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    all_results: dict[str, dict[str, dict[str, list[float]]]] = {}
    t0 = time.monotonic()
    for exp in args.experiments:
        fn, methods = EXPERIMENTS[exp]
        t1 = time.monotonic()
        per: dict[str, dict[str, list[float]]] = {}
        for seed in args.seeds:
            cfg = dataclasses.replace(
                M.MechanismConfig(),
                seed=seed,
                episodes=args.episodes,
                train_steps=args.train_steps,
                p_viable=args.p_viable,
            )
            res = fn(cfg, methods)
            for method, figs in res.items():
                for key, value in figs.items():
                    per.setdefault(method, {}).setdefault(key, []).append(float(value))
        all_results[exp] = per
        keys = [k for k in per[methods[0]]]
        print(f"\n## {exp} ({len(args.seeds)} seeds, {time.monotonic() - t1:.0f} s)\n")
        print("| method | " + " | ".join(keys) + " |")
        print("|---|" + "---|" * len(keys))
        for method in methods:
            cells = []
            for k in keys:
                v = np.array(per[method][k])
                cells.append(f"{v.mean():.3g} [{v.min():.3g}, {v.max():.3g}]")
            print(f"| {method} | " + " | ".join(cells) + " |")
        if "_data" in per:
            data = {k: f"{np.mean(v):.3g}" for k, v in per["_data"].items()}
            print(f"\ndata (mean over seeds): {data}")
    print(f"\nwall {time.monotonic() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(all_results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
