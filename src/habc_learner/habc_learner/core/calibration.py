"""Calibration of the viability head: AUROC, ECE, Brier score, BCE, reliability bins.

Pure numpy, one function per figure. ``p`` are predicted success probabilities p_v, ``y`` the
realised outcomes z_e ∈ {0, 1}, both [N].
"""

from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 10


def _as_arrays(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"p {p.shape} and y {y.shape} differ")
    return p, y


def auroc(p: np.ndarray, y: np.ndarray) -> float:
    """AUROC = P(p_pos > p_neg) + ½·P(p_pos = p_neg) (Mann–Whitney U / (n_pos·n_neg), ties at
    their mean rank); NaN without both classes."""
    p, y = _as_arrays(p, y)
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1, dtype=np.float64)
    # Average the ranks of tied predictions.
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        if count > 1:
            ranks[order[start : start + count]] = start + (count + 1) / 2.0
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE = Σ_b (n_b / N) · |mean_b(p) − mean_b(y)| over ``bins`` equal-width bins of p
    (p = 1 falls in the last bin); NaN when empty."""
    p, y = _as_arrays(p, y)
    if not len(p):
        return float("nan")
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    sp = np.bincount(idx, weights=p, minlength=bins)
    sy = np.bincount(idx, weights=y, minlength=bins)
    return float(np.abs(sp - sy).sum() / len(p))


def brier_score(p: np.ndarray, y: np.ndarray) -> float:
    """Brier = mean (p − y)²; NaN when empty."""
    p, y = _as_arrays(p, y)
    return float(np.mean((p - y) ** 2)) if len(p) else float("nan")


def binary_cross_entropy(p: np.ndarray, y: np.ndarray, eps: float = 1e-6) -> float:
    """BCE = −mean[y·log p + (1 − y)·log(1 − p)], p clamped to [eps, 1 − eps]; NaN when
    empty."""
    p, y = _as_arrays(p, y)
    if not len(p):
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def calibration_summary(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """AUROC, ECE, Brier, BCE, counts and the reliability bins (count, mean p, mean y)."""
    p, y = _as_arrays(p, y)
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    n = np.bincount(idx, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=bins) / n
        mean_y = np.bincount(idx, weights=y, minlength=bins) / n
    return {
        "n": len(p),
        "positives": int(y.sum()),
        "auroc": auroc(p, y),
        "ece": expected_calibration_error(p, y, bins),
        "brier": brier_score(p, y),
        "bce": binary_cross_entropy(p, y),
        "mean_p": float(p.mean()) if len(p) else float("nan"),
        "mean_y": float(y.mean()) if len(y) else float("nan"),
        "bin_count": n.tolist(),
        "bin_mean_p": mean_p.tolist(),
        "bin_mean_y": mean_y.tolist(),
    }
