"""Pure checks of the policy server: where a checkpoint may be loaded from, which state it gets.

- :func:`resolve_under_roots`: an announced checkpoint path (from anyone on the DDS domain)
  is loaded only when it lies inside one of the configured root directories, after resolving
  every ``..`` and symlink; the root used is returned for the log.
- :func:`use_env_state`: whether the privileged sim state is appended to the proprioception,
  from the policy's ``proprio_dim`` and the state's *measured* length (``/habc/env_state``
  is 7 values on transfer_cube, 14 on insertion).

No ROS, no torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

ENV_STATE_MODES = ("auto", "true", "false")


class CheckpointPathError(ValueError):
    """An announced checkpoint path outside every configured root (the message says why)."""


def resolve_under_roots(
    path: str | os.PathLike[str], roots: Sequence[str | os.PathLike[str]]
) -> tuple[Path, Path]:
    """``(resolved path, root)`` of ``path`` when it lies inside one of ``roots``.

    A relative path is taken relative to the working directory. Refused
    (:class:`CheckpointPathError`): no roots configured; an empty path; any ``..`` component
    (path traversal, even one that would land back inside a root); and a path whose real
    location — every symlink resolved, the roots' own included — is not inside a root's real
    location (a symlink escaping the root).
    """
    if not roots:
        raise CheckpointPathError("no checkpoint_roots configured: refusing every path")
    if not os.fspath(path):
        raise CheckpointPathError("no path given")
    raw = Path(os.fspath(path))
    if ".." in raw.parts:
        raise CheckpointPathError(f"{raw} contains '..' (path traversal)")
    real = Path(os.path.realpath(raw.absolute()))
    for root in roots:
        root_real = Path(os.path.realpath(Path(os.fspath(root)).expanduser()))
        if real == root_real or root_real in real.parents:
            return real, root_real
    shown = [str(r) for r in roots]
    if real != raw:
        raise CheckpointPathError(
            f"{raw} resolves to {real} (a symlink), which is outside every checkpoint root {shown}"
        )
    raise CheckpointPathError(f"{raw} is outside every checkpoint root {shown}")


def use_env_state(mode: str, proprio_dim: int, joint_dim: int, env_dim: int | None) -> bool:
    """Whether to feed ``[joints, env_state]`` to a policy with ``proprio_dim`` inputs.

    ``"true"``/``"false"`` decide; ``"auto"`` appends the state when
    ``proprio_dim == joint_dim + env_dim`` with ``env_dim`` the length of the state actually
    received (``None`` before the first message: then only a policy that cannot be fed by the
    joints alone waits for it).
    """
    if mode not in ENV_STATE_MODES:
        raise ValueError(f"use_env_state must be one of {ENV_STATE_MODES}, got {mode!r}")
    if mode != "auto":
        return mode == "true"
    if env_dim is None:
        return proprio_dim != joint_dim
    return proprio_dim == joint_dim + env_dim
