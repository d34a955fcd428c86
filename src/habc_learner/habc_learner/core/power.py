"""Statistical power of the benchmark: a converged SFT start, a start tuned into a band, and
paired intervals (pure: numpy only, no torch, no ROS).

- :class:`PlateauStopper`: early stopping on a held-out validation loss (SFT to convergence).
- :func:`tune_monotone_knob`: the smallest setting of a knob whose cheap success estimate lands
  in a band, for a success that grows with the knob (e.g. the number of demonstrations).
- :func:`paired_bootstrap`: mean paired difference of two methods evaluated on the same poses,
  with a two-level (seeds, then poses) percentile bootstrap interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


# ------------------------------------------------------------------------------ SFT plateau
@dataclass
class PlateauStopper:
    """Early stopping on a validation loss L evaluated every few steps.

    An evaluation *improves* when ``L < best · (1 − min_rel_delta)``; training stops after
    ``patience`` evaluations in a row without an improvement (the plateau). ``best_step`` is the
    step of the lowest loss, the weights to keep.

    Attributes:
        patience: evaluations without improvement before stopping (>= 1).
        min_rel_delta: relative improvement that counts (0.01 = 1 % lower than the best).
    """

    patience: int = 5
    min_rel_delta: float = 0.01
    best_loss: float = math.inf
    best_step: int = -1
    bad_evals: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if not 0.0 <= self.min_rel_delta < 1.0:
            raise ValueError(f"min_rel_delta must be in [0, 1), got {self.min_rel_delta}")

    def update(self, step: int, loss: float) -> bool:
        """Record the loss at ``step``; True when training should stop (plateau reached)."""
        if math.isnan(loss):
            raise ValueError(f"validation loss is NaN at step {step}")
        self.history.append((int(step), float(loss)))
        if loss < self.best_loss * (1.0 - self.min_rel_delta) or self.best_step < 0:
            self.best_loss, self.best_step, self.bad_evals = float(loss), int(step), 0
        else:
            self.bad_evals += 1
        return self.stopped

    @property
    def stopped(self) -> bool:
        return self.bad_evals >= self.patience

    def to_dict(self) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "min_rel_delta": self.min_rel_delta,
            "best_loss": self.best_loss,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "plateau": self.stopped,
            "history": [list(h) for h in self.history],
        }


# ------------------------------------------------------------------------------ band tuning
@dataclass(frozen=True)
class KnobProbe:
    value: Any
    successes: int
    episodes: int

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else float("nan")


@dataclass(frozen=True)
class TuneResult:
    """The chosen knob value, whether its estimate is in the band, and every probe made."""

    value: Any
    in_band: bool
    probes: tuple[KnobProbe, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "in_band": self.in_band,
            "probes": [
                {"value": p.value, "successes": p.successes, "episodes": p.episodes}
                for p in self.probes
            ],
        }


def band_distance(rate: float, band: tuple[float, float]) -> float:
    """0 inside ``[lo, hi]``, else the distance to the nearer edge."""
    lo, hi = band
    return max(lo - rate, rate - hi, 0.0)


def tune_monotone_knob(
    candidates: Sequence[Any],
    estimate: Callable[[Any], tuple[int, int]],
    band: tuple[float, float] = (0.15, 0.50),
    refine_integers: bool = False,
) -> TuneResult:
    """Bisection over ``candidates`` (ordered so that success grows along them) for a value
    whose estimate ``estimate(value) -> (successes, episodes)`` lies in ``band``.

    Probes the middle candidate; above the band it moves to weaker candidates (lower index),
    below the band to stronger ones, and stops at the first probe inside the band. When the
    bracket closes without one, the probe closest to the band is chosen (``in_band`` False);
    among equally close probes the weaker one. At most ``ceil(log2(n + 1))`` probes.

    ``refine_integers`` (integer candidates, e.g. a number of demonstrations): when the
    bracket closes between a probe below the band and one above it with integers in between
    (8 → 13 %, 12 → 53 %), bisect on those integers too (10, then 9 or 11) before giving up.
    """
    if not candidates:
        raise ValueError("tune_monotone_knob needs at least one candidate")
    lo_b, hi_b = band
    if not 0.0 <= lo_b <= hi_b <= 1.0:
        raise ValueError(f"band must satisfy 0 <= lo <= hi <= 1, got {band}")
    lo, hi = 0, len(candidates) - 1
    probes: list[KnobProbe] = []
    index_of: dict[int, int] = {}
    while lo <= hi:
        mid = (lo + hi) // 2
        s, n = estimate(candidates[mid])
        if n < 1 or not 0 <= s <= n:
            raise ValueError(f"estimate({candidates[mid]!r}) returned ({s}, {n})")
        probes.append(KnobProbe(candidates[mid], int(s), int(n)))
        index_of[len(probes) - 1] = mid
        rate = s / n
        if lo_b <= rate <= hi_b:
            return TuneResult(candidates[mid], True, tuple(probes))
        if rate > hi_b:
            hi = mid - 1
        else:
            lo = mid + 1
    if refine_integers:
        below = [p.value for p in probes if p.rate < lo_b]
        above = [p.value for p in probes if p.rate > hi_b]
        a, b = (max(below), min(above)) if below and above else (0, 0)
        while b - a > 1:
            m = (a + b) // 2
            s, n = estimate(m)
            if n < 1 or not 0 <= s <= n:
                raise ValueError(f"estimate({m!r}) returned ({s}, {n})")
            probes.append(KnobProbe(m, int(s), int(n)))
            if lo_b <= s / n <= hi_b:
                return TuneResult(m, True, tuple(probes))
            a, b = (a, m) if s / n > hi_b else (m, b)
        order = {p.value: p.value for p in probes}  # integers: weaker = smaller
    else:
        order = {probes[i].value: index_of[i] for i in index_of}
    best = min(probes, key=lambda p: (band_distance(p.rate, band), order[p.value]))
    return TuneResult(best.value, False, tuple(probes))


# ------------------------------------------------------------------------------ paired stats
def _as_seed_arrays(values: Sequence[Sequence[float]], name: str) -> list[np.ndarray]:
    arrays = [np.asarray(v, dtype=np.float64) for v in values]
    if not arrays:
        raise ValueError(f"{name}: no seeds")
    for i, a in enumerate(arrays):
        if a.ndim != 1 or len(a) == 0:
            raise ValueError(f"{name}: seed {i} has shape {a.shape}, want a non-empty vector")
    return arrays


def paired_difference(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Δ = (1/S) Σ_s (1/N_s) Σ_i (a_{s,i} − b_{s,i}): the mean over seeds of the per-seed mean
    difference on the same poses i (a, b: per seed, per pose outcomes, e.g. 0/1 success)."""
    return float(np.mean([d.mean() for d in _differences(a, b)]))


def _differences(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> list[np.ndarray]:
    aa, bb = _as_seed_arrays(a, "a"), _as_seed_arrays(b, "b")
    if len(aa) != len(bb):
        raise ValueError(f"a has {len(aa)} seeds, b has {len(bb)}")
    for s, (x, y) in enumerate(zip(aa, bb)):
        if x.shape != y.shape:
            raise ValueError(f"seed {s}: a has {len(x)} poses, b has {len(y)}: pairs need both")
    return [x - y for x, y in zip(aa, bb)]


@dataclass(frozen=True)
class PairedInterval:
    """Mean paired difference and its percentile bootstrap interval."""

    mean: float
    lo: float
    hi: float
    seeds: int
    poses: int

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0.0 or self.hi < 0.0

    def format(self, scale: float = 100.0) -> str:
        """``"+12 [+3, +21]"`` (percentage points by default)."""
        return f"{scale * self.mean:+.0f} [{scale * self.lo:+.0f}, {scale * self.hi:+.0f}]"


def paired_bootstrap(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
    resample_poses: bool = True,
) -> PairedInterval:
    """Two-level percentile bootstrap of :func:`paired_difference`.

    Each replicate draws S seeds with replacement, and within each drawn seed its N_s pose
    differences d_{s,i} = a_{s,i} − b_{s,i} with replacement (the pairs stay together, so the
    pose-to-pose variation common to both methods cancels); the replicate statistic is the
    mean over drawn seeds of the mean drawn difference. The interval is the
    ((1 − level)/2, (1 + level)/2) quantile pair of the replicates (numpy's linear quantile).
    ``resample_poses=False`` resamples seeds only (the per-seed means are then fixed).
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    diffs = _differences(a, b)
    rng = np.random.default_rng(seed)
    n_seeds = len(diffs)
    seed_draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    if resample_poses:
        # per seed: n_boot bootstrap means of its pose differences
        seed_means = np.stack(
            [d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1) for d in diffs]
        )  # [S, n_boot]
        stats = seed_means[seed_draws, np.arange(n_boot)[:, None]].mean(axis=1)
    else:
        means = np.array([d.mean() for d in diffs])
        stats = means[seed_draws].mean(axis=1)
    q = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [q, 1.0 - q])
    return PairedInterval(
        mean=float(np.mean([d.mean() for d in diffs])),
        lo=float(lo),
        hi=float(hi),
        seeds=n_seeds,
        poses=int(sum(len(d) for d in diffs)),
    )
