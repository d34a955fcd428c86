"""Where announced checkpoints may come from, and which state the policy is fed (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from habc_policy.core.serving_guard import (
    CheckpointPathError,
    resolve_under_roots,
    use_env_state,
)


def test_inside_a_root_is_accepted_and_names_the_root(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "step_1").mkdir(parents=True)
    (b / "x" / "step_2").mkdir(parents=True)
    assert resolve_under_roots(a / "step_1", [a, b]) == ((a / "step_1").resolve(), a.resolve())
    assert resolve_under_roots(b / "x" / "step_2", [a, b])[1] == b.resolve()


def test_traversal_escape_and_symlinks_are_refused(tmp_path: Path) -> None:
    root, other = tmp_path / "root", tmp_path / "other"
    (root / "step_1").mkdir(parents=True)
    (other / "step_9").mkdir(parents=True)
    with pytest.raises(CheckpointPathError, match="outside every checkpoint root"):
        resolve_under_roots(other / "step_9", [root])
    with pytest.raises(CheckpointPathError, match="path traversal"):
        resolve_under_roots(root / ".." / "other" / "step_9", [root])
    with pytest.raises(CheckpointPathError, match="path traversal"):  # even back inside
        resolve_under_roots(root / "step_1" / ".." / "step_1", [root])
    (root / "escape").symlink_to(other / "step_9")
    with pytest.raises(CheckpointPathError, match="a symlink"):
        resolve_under_roots(root / "escape", [root])
    (root / "inner").symlink_to(root / "step_1")  # a symlink that stays inside is fine
    assert resolve_under_roots(root / "inner", [root])[0] == (root / "step_1").resolve()
    # a prefix of the root's name is not the root
    (tmp_path / "root2" / "s").mkdir(parents=True)
    with pytest.raises(CheckpointPathError, match="outside"):
        resolve_under_roots(tmp_path / "root2" / "s", [root])
    with pytest.raises(CheckpointPathError, match="no checkpoint_roots"):
        resolve_under_roots(root / "step_1", [])
    with pytest.raises(CheckpointPathError, match="no path"):
        resolve_under_roots("", [root])


def test_a_symlinked_root_is_compared_by_its_real_location(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "ckpts"
    (real / "step_1").mkdir(parents=True)
    (tmp_path / "ckpts").symlink_to(real)
    assert resolve_under_roots(real / "step_1", [tmp_path / "ckpts"])[1] == real.resolve()


@pytest.mark.parametrize(
    ("mode", "proprio", "joints", "env", "expected"),
    [
        ("auto", 21, 14, 7, True),  # transfer_cube: 14 joints + 7 cube pose
        ("auto", 28, 14, 14, True),  # insertion: 14 joints + peg and socket poses
        ("auto", 28, 14, None, True),  # not yet received: wait for it
        ("auto", 14, 14, 7, False),  # a joints-only policy
        ("auto", 14, 14, None, False),
        ("true", 14, 14, 7, True),
        ("false", 21, 14, 7, False),
    ],
)
def test_env_state_from_the_received_length(
    mode: str, proprio: int, joints: int, env: int | None, expected: bool
) -> None:
    assert use_env_state(mode, proprio, joints, env) is expected


def test_env_state_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="one of"):
        use_env_state("yes", 21, 14, 7)
