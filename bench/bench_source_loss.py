"""Flow loss of the SFT start per window source, on the protocol's own data.

For each seed of a ``habc-protocol`` work folder: the SFT start checkpoint, its round-1
rollouts (demonstrations + the SFT policy's rollouts with the scripted operator's takeovers,
read back through the bag reader), and the mean per-window flow loss ℓ_i (Eq. 1, fixed ε and
τ, forward passes only) of each source, with the window counts. Example::

    python bench/bench_source_loss.py <the habc-protocol flags of the run>
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("habc_policy", "habc_learner"):
    sys.path.insert(0, str(ROOT / "src" / pkg))


def main() -> None:
    import torch

    from habc_learner.core.labeling import Source
    from habc_learner.core.sft_convergence import HeldOutFlowLoss
    from habc_learner.core.trainer import Trainer
    from habc_learner.protocol import (
        SeedRun,
        build_parser,
        config_from_args,
        method_config,
        resolve_demos,
    )

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-windows", type=int, default=2048)
    args, protocol_argv = p.parse_known_args()
    torch.set_num_threads(1)
    # the protocol invocation's own flags (they locate and validate the run)
    cfg = resolve_demos(config_from_args(build_parser().parse_args(protocol_argv), ""), tune=False)
    print(f"{'seed':>4} {'source':<16} {'windows':>8} {'mean flow loss':>15}")
    for seed in cfg.seeds:
        run = SeedRun(cfg, seed)
        start = json.loads((run.root / "sft_start" / "round_00.json").read_text())
        run.demos, _ = run.demo_episodes(cfg.demos)
        run.dims = (run.demos[0].proprio_dim, run.demos[0].action_dim)
        tcfg = run.trainer_config(method_config(cfg, "imit_dagger"), "source_loss", 1)
        tcfg = dataclasses.replace(tcfg, checkpoint_dir=None, log_dir=None)
        store = run.store_for(tcfg, ["sft"])
        trainer = Trainer(tcfg, store)
        trainer.init_policy_from(start["checkpoint"])
        for src in (
            Source.DEMO,
            Source.INTERVENTION,
            Source.ROLLOUT_SUCCESS,
            Source.ROLLOUT_FAILURE,
        ):
            rows = store.source_indices(src)
            if not len(rows):
                print(f"{seed:>4} {src.name.lower():<16} {0:>8} {'–':>15}")
                continue
            loss = HeldOutFlowLoss(trainer, store, args.max_windows, seed=seed, rows=rows)()
            print(f"{seed:>4} {src.name.lower():<16} {len(rows):>8} {loss:>15.4f}")


if __name__ == "__main__":
    main()
