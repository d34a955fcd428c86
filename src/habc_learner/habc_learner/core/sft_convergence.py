"""SFT to convergence: train until the flow-matching loss on held-out demonstration episodes
stops falling (:class:`~habc_learner.core.power.PlateauStopper`), keep the best weights.

The held-out loss is Eq. 1's per-window flow loss ℓ_i averaged over every window of the
held-out episodes (capped at ``max_windows``, evenly spaced), with the noise ε and flow time τ
drawn once from a fixed seed, so two evaluations differ only by the weights.
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from habc_learner.core.power import PlateauStopper
from habc_learner.core.replay import ReplayStore


class HeldOutFlowLoss:
    """L_val = (1/N) Σ_i ℓ_i over held-out windows (all of ``store``'s, or ``rows``), fixed ε
    and τ (see the module doc)."""

    def __init__(
        self,
        trainer,
        store: ReplayStore,
        max_windows: int = 4096,
        seed: int = 0,
        rows: np.ndarray | None = None,
    ):
        rows = np.arange(len(store)) if rows is None else np.asarray(rows)
        if len(rows) == 0:
            raise ValueError("the held-out store has no windows")
        if len(rows) > max_windows:
            rows = rows[np.linspace(0, len(rows) - 1, max_windows).astype(int)]
        self.trainer = trainer
        cams = bool(trainer.config.policy.camera_names)
        self.batch = store.gather(rows, load_images=cams, next_images=False).to(trainer.device)
        gen = torch.Generator(device=trainer.device)
        gen.manual_seed(seed)
        self.noise, self.tau = trainer.policy.draw_noise_and_tau(len(rows), gen, trainer.device)
        self.windows = len(rows)

    name = "held-out flow loss"

    def __call__(self) -> float:
        tr = self.trainer
        norm = tr.ensure_normalizer()
        b = self.batch
        was = tr.policy.training
        tr.policy.eval()
        with torch.no_grad():
            features = tr.policy.encode(
                norm.normalize_proprio(b.proprio), b.prompt_tokens, b.images or None
            )
            loss = tr.policy.per_sample_loss(
                features,
                norm.normalize_action(b.actions),
                b.action_mask,
                self.noise,
                self.tau,
                entry_mean=tr.method.entry_mean,
            )
        tr.policy.train(was)
        return float(loss.mean())


class HeldOutActionError(HeldOutFlowLoss):
    """L_act = Σ_i Σ_{h,d} m_{i,h,d} (Â_i − A_i)² / Σ m over held-out windows: the squared
    error of the chunk the policy would *execute* (the Euler sampler's output from a fixed
    noise, normalized action space) against the demonstrated chunk, on its target entries.

    Unlike the flow loss (a one-τ denoising error), this is the policy's closed-loop output,
    which is what success depends on (``docs/results/budget.md`` § 1: the held-out losses stop
    falling long before success does). The windows are chosen as :class:`HeldOutFlowLoss`
    chooses them; the sampler's starting noise is drawn once from ``seed``."""

    def __init__(
        self,
        trainer,
        store: ReplayStore,
        max_windows: int = 1024,
        seed: int = 0,
        rows: np.ndarray | None = None,
    ):
        super().__init__(trainer, store, max_windows, seed, rows)
        cfg = trainer.policy.config
        gen = torch.Generator(device=trainer.device)
        gen.manual_seed(seed)
        self.noise = torch.randn(
            self.windows, cfg.horizon, cfg.action_dim, generator=gen, device=trainer.device
        )

    name = "held-out chunk error"

    def __call__(self) -> float:
        tr = self.trainer
        norm = tr.ensure_normalizer()
        b = self.batch
        was = tr.policy.training
        tr.policy.eval()
        with torch.no_grad():
            sampled = tr.policy.sample_actions(
                norm.normalize_proprio(b.proprio),
                b.prompt_tokens,
                b.images or None,
                noise=self.noise,
            )
            target = norm.normalize_action(b.actions)
            m = b.action_mask.to(sampled.dtype)
            err = float(((sampled - target) ** 2 * m).sum() / m.sum().clamp_min(1.0))
        tr.policy.train(was)
        return err


def train_to_plateau(
    trainer,
    heldout: Callable[[], float],
    *,
    max_steps: int,
    validate_every: int,
    stopper: PlateauStopper,
    say=None,
) -> dict[str, Any]:
    """Train ``trainer`` (any method; SFT here) until ``stopper`` sees a plateau of the
    held-out loss or ``max_steps`` steps ran, then restore the weights of the best evaluation
    and set ``trainer.learner_step`` to its step (the checkpoint is labelled with the step its
    weights come from; the optimizer state is the last step's, which nothing downstream
    reads: every method starts from the SFT policy's weights).

    Returns the stopper's record plus ``steps_run``, ``train_s`` and the means of the logged
    training scalars.
    """
    if max_steps < 1 or validate_every < 1:
        raise ValueError(
            f"max_steps and validate_every must be >= 1, got {max_steps}, {validate_every}"
        )
    t0 = time.monotonic()
    start = trainer.learner_step
    best_state = copy.deepcopy(trainer.policy.state_dict())
    stopper.update(trainer.learner_step, heldout())
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    while trainer.learner_step - start < max_steps and not stopper.stopped:
        n = min(validate_every, max_steps - (trainer.learner_step - start))
        for _ in range(n):
            for k, v in trainer.train_step().items():
                if not math.isnan(v):
                    sums[k] += v
                    counts[k] += 1
        loss = heldout()
        stopper.update(trainer.learner_step, loss)
        if stopper.best_step == trainer.learner_step:
            best_state = copy.deepcopy(trainer.policy.state_dict())
        if say is not None:
            say(
                f"SFT step {trainer.learner_step}: {getattr(heldout, 'name', 'held-out loss')} "
                f"{loss:.4f} "
                f"(best {stopper.best_loss:.4f} at {stopper.best_step}, "
                f"{stopper.bad_evals}/{stopper.patience} without improvement)"
            )
    steps_run = trainer.learner_step - start
    trainer.policy.load_state_dict(best_state)
    trainer.learner_step = stopper.best_step
    return {
        **stopper.to_dict(),
        "max_steps": max_steps,
        "validate_every": validate_every,
        "heldout_windows": getattr(heldout, "windows", None),
        "steps_run": steps_run,
        "train_s": time.monotonic() - t0,
        "means": {k: sums[k] / counts[k] for k in sums},
    }
