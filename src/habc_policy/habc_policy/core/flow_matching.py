"""Flow matching as small stateless functions (``HABC_METHOD.md``, "Actor: weighted flow matching").

Convention (π0 / HABC): τ = 0 is pure noise, τ = 1 is data.

    A^τ = τ·A + (1 − τ)·ε,        ε ~ N(0, I)
    u   = A − ε                   (target velocity, constant along the straight path)
    dA/dτ = v_θ(A^τ, τ | o)       integrated from τ = 0 to 1 with Euler steps at inference.

Shapes: ``actions``/``noise`` are [B, H, d]; ``tau`` is [B].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]


def _expand_tau(tau: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, ..., 1] broadcastable against ``like``."""
    if tau.ndim != 1 or tau.shape[0] != like.shape[0]:
        raise ValueError(f"tau must have shape [B={like.shape[0]}], got {tuple(tau.shape)}")
    return tau.reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(actions: Tensor, noise: Tensor, tau: Tensor) -> Tensor:
    """A^τ = τ·A + (1 − τ)·ε.

    Args:
        actions: A, clean chunks [B, H, d].
        noise: ε, [B, H, d].
        tau: τ in [0, 1], [B].

    Returns:
        A^τ, [B, H, d].
    """
    if actions.shape != noise.shape:
        raise ValueError(f"actions {tuple(actions.shape)} and noise {tuple(noise.shape)} differ")
    t = _expand_tau(tau, actions)
    return t * actions + (1.0 - t) * noise


def target_velocity(actions: Tensor, noise: Tensor) -> Tensor:
    """u = A − ε, the flow-matching target velocity [B, H, d]."""
    if actions.shape != noise.shape:
        raise ValueError(f"actions {tuple(actions.shape)} and noise {tuple(noise.shape)} differ")
    return actions - noise


def velocity_from_clean(
    clean_pred: Tensor, noisy: Tensor, tau: Tensor, min_one_minus_tau: float = 0.05
) -> Tensor:
    """v = (Â − A^τ) / max(1 − τ, min_one_minus_tau).

    Exact for the straight path: if Â = A then v = u = A − ε (whenever 1 − τ ≥ the clamp).

    Args:
        clean_pred: Â, predicted clean chunk [B, H, d].
        noisy: A^τ, [B, H, d].
        tau: τ, [B].
        min_one_minus_tau: lower clamp of 1 − τ (0.05, ``notes/simulation.md``).

    Returns:
        v, [B, H, d].
    """
    one_minus = (1.0 - _expand_tau(tau, noisy)).clamp_min(min_one_minus_tau)
    return (clean_pred - noisy) / one_minus


def sample_tau(
    batch_size: int,
    schedule: str = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Draw flow times τ, [B].

    ``"uniform"``: τ ~ U(0, 1). ``"beta"``: the π0 schedule, s ~ Beta(1.5, 1) scaled to
    [0.001, 1] on the noise axis, i.e. τ = 1 − (0.999·s + 0.001), emphasizing noisy times.
    """
    if schedule == "uniform":
        return torch.rand(batch_size, generator=generator, device=device)
    if schedule == "beta":
        # Inverse CDF of Beta(1.5, 1): F(s) = s^1.5 -> s = U^(1/1.5); reproducible with a generator.
        u = torch.rand(batch_size, generator=generator, device=device)
        s = u.pow(1.0 / 1.5)
        return 1.0 - (0.999 * s + 0.001)
    raise ValueError(f"time schedule {schedule!r} is not one of ('uniform', 'beta')")


def euler_sample(velocity_fn: VelocityFn, noise: Tensor, num_steps: int = 10) -> Tensor:
    """Integrate dA/dτ = v(A, τ) from τ = 0 (noise) to τ = 1 with ``num_steps`` Euler steps.

        A_{k+1} = A_k + Δτ · v(A_k, τ_k),   τ_k = k·Δτ,   Δτ = 1 / num_steps.

    Args:
        velocity_fn: ``(A^τ [B, H, d], τ [B]) -> v [B, H, d]``.
        noise: A_0 = ε, [B, H, d].
        num_steps: number of Euler steps (10 at inference).

    Returns:
        A_1, the sampled chunk [B, H, d].
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    dt = 1.0 / num_steps
    x = noise
    for k in range(num_steps):
        tau = torch.full((noise.shape[0],), k * dt, dtype=noise.dtype, device=noise.device)
        x = x + dt * velocity_fn(x, tau)
    return x


ENTRY_MEANS = ("unmasked", "all_entries")


def masked_mse_per_sample(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, entry_mean: str = "unmasked"
) -> Tensor:
    """Per-sample loss of Eq. 1 over a window's target entries, unreduced over B.

    ``"unmasked"`` (default): ``ℓ_i = Σ_{h,d} m·(pred − target)² / max(Σ_{h,d} m, 1)``, the
    mean over the window's target entries, so a one-arm intervention window with 10 human
    steps weighs as much per target entry as a full window. ``"all_entries"``: ``ℓ_i =
    mean_{h,d} m·(pred − target)²`` over all H·d entries, as Eq. 1 is written (masked entries
    count as zeros, which scales a window's loss by its share of target entries).

    Args:
        pred: [B, H, d].
        target: [B, H, d].
        mask: validity mask m [B, H, d] (bool or float), ``None`` for all valid.
        entry_mean: ``"unmasked"`` or ``"all_entries"``.

    Returns:
        [B] per-sample losses.
    """
    if entry_mean not in ENTRY_MEANS:
        raise ValueError(f"entry_mean {entry_mean!r} is not one of {ENTRY_MEANS}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    err = (pred - target).square()
    if mask is not None:
        if mask.shape != pred.shape:
            raise ValueError(f"mask {tuple(mask.shape)} must match pred {tuple(pred.shape)}")
        m = mask.to(err.dtype)
        err = err * m
        if entry_mean == "unmasked":
            return err.flatten(1).sum(dim=1) / m.flatten(1).sum(dim=1).clamp_min(1.0)
    return err.flatten(1).mean(dim=1)
