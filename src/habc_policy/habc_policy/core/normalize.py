"""Per-dimension mean/std normalization with a floored std (``notes/simulation.md``).

Some dimensions never move (a locked joint, a gripper never used in the demos); their std is
floored at ``1e-2`` so normalization never divides by ~0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DEFAULT_STD_FLOOR = 1e-2
#: Normalized proprioception is clamped to ±this many demonstration standard deviations. A
#: rollout can reach states no demonstration had (a cube tipped over: its quaternion moves by
#: ~1 where the demonstrations' std is 0.01, i.e. 100 σ); unclamped, such inputs dominate the
#: encoder's gradients and wreck the policy within a few learner steps (measured in
#: docs/results/operator.md).
PROPRIO_CLIP = 5.0


@dataclass(frozen=True)
class NormalizationStats:
    """mean/std of one quantity, each [D] float32, and optionally its range [low, high]."""

    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"mean {mean.shape} and std {std.shape} must both be [D]")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError("mean must be finite and std finite and > 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if (self.low is None) != (self.high is None):
            raise ValueError("give both low and high, or neither")
        if self.low is not None:
            low = np.asarray(self.low, dtype=np.float32)
            high = np.asarray(self.high, dtype=np.float32)
            if low.shape != mean.shape or high.shape != mean.shape or np.any(low > high):
                raise ValueError(
                    f"low {low.shape} / high {high.shape} must be [D] with low <= high"
                )
            object.__setattr__(self, "low", low)
            object.__setattr__(self, "high", high)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def identity(cls, dim: int) -> NormalizationStats:
        """mean 0, std 1: normalization is a no-op."""
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32))


def compute_stats(values: np.ndarray, std_floor: float = DEFAULT_STD_FLOOR) -> NormalizationStats:
    """Per-dimension mean and std over all leading axes of ``values`` [..., D], std ≥ std_floor."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim < 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty [..., D] array, got shape {values.shape}")
    if std_floor <= 0:
        raise ValueError(f"std_floor must be > 0, got {std_floor}")
    flat = values.reshape(-1, values.shape[-1])
    return NormalizationStats(
        mean=flat.mean(axis=0),
        std=np.maximum(flat.std(axis=0), std_floor),
        low=flat.min(axis=0),
        high=flat.max(axis=0),
    )


@dataclass(frozen=True)
class Normalizer:
    """Normalization of proprioception [.., p] and actions [.., d] for the actor."""

    proprio: NormalizationStats
    action: NormalizationStats

    def _t(self, stats: NormalizationStats, like: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.as_tensor(stats.mean, device=like.device, dtype=like.dtype)
        std = torch.as_tensor(stats.std, device=like.device, dtype=like.dtype)
        if like.shape[-1] != stats.dim:
            raise ValueError(f"last dim {like.shape[-1]} does not match stats dim {stats.dim}")
        return mean, std

    def normalize_proprio(self, x: Tensor) -> Tensor:
        """``clamp((x − mean) / std, ±PROPRIO_CLIP)``."""
        mean, std = self._t(self.proprio, x)
        return ((x - mean) / std).clamp(-PROPRIO_CLIP, PROPRIO_CLIP)

    def normalize_action(self, x: Tensor) -> Tensor:
        mean, std = self._t(self.action, x)
        return (x - mean) / std

    def unnormalize_action(self, x: Tensor) -> Tensor:
        mean, std = self._t(self.action, x)
        return x * std + mean

    def clip_action(self, x: Tensor) -> Tensor:
        """Clamp robot-unit actions to the range seen in training (no-op without a range).

        The sampler's noise can carry a chunk slightly past what any demonstration commanded
        (e.g. a gripper at 1.05 of a [0, 1] range); the deployed policy never asks for more.
        """
        if self.action.low is None:
            return x
        low = torch.as_tensor(self.action.low, device=x.device, dtype=x.dtype)
        high = torch.as_tensor(self.action.high, device=x.device, dtype=x.dtype)
        return torch.maximum(torch.minimum(x, high), low)

    def state_dict(self) -> dict[str, Tensor]:
        """Flat tensors for safetensors."""
        out = {
            "proprio.mean": torch.from_numpy(self.proprio.mean.copy()),
            "proprio.std": torch.from_numpy(self.proprio.std.copy()),
            "action.mean": torch.from_numpy(self.action.mean.copy()),
            "action.std": torch.from_numpy(self.action.std.copy()),
        }
        if self.action.low is not None:
            out["action.low"] = torch.from_numpy(self.action.low.copy())
            out["action.high"] = torch.from_numpy(self.action.high.copy())
        return out

    @classmethod
    def from_state_dict(cls, tensors: dict[str, Tensor]) -> Normalizer:
        needed = ("proprio.mean", "proprio.std", "action.mean", "action.std")
        missing = [k for k in needed if k not in tensors]
        if missing:
            raise ValueError(f"normalizer tensors missing {missing}; have {sorted(tensors)}")
        return cls(
            proprio=NormalizationStats(
                tensors["proprio.mean"].cpu().numpy(), tensors["proprio.std"].cpu().numpy()
            ),
            action=NormalizationStats(
                tensors["action.mean"].cpu().numpy(),
                tensors["action.std"].cpu().numpy(),
                tensors["action.low"].cpu().numpy() if "action.low" in tensors else None,
                tensors["action.high"].cpu().numpy() if "action.high" in tensors else None,
            ),
        )

    @classmethod
    def identity(cls, proprio_dim: int, action_dim: int) -> Normalizer:
        return cls(
            NormalizationStats.identity(proprio_dim), NormalizationStats.identity(action_dim)
        )
