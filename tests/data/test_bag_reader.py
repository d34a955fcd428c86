"""Episode bags written and read back: arrays survive; bad bags are skipped with a reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from habc_common import bag_format as bf
from habc_learner.core.bag_reader import BagSkipped, read_episode, read_episodes, write_episode
from habc_learner.core.episode import HUMAN, NONE, POLICY, Episode, Outcome

T = 30


def make_episode(episode_id: str = "ep-a", outcome: str = "success") -> Episode:
    rng = np.random.default_rng(3)
    authority = np.full((T, 2), POLICY, np.uint8)
    authority[10:20, 1] = HUMAN  # one-arm takeover of the right arm
    authority[25, :] = NONE  # one hold tick
    return Episode(
        episode_id=episode_id,
        task_id="transfer_cube",
        prompt="hand the cube over",
        timestamps=5.0 + 0.02 * np.arange(T),
        proprio=rng.standard_normal((T, 14 + 7)).astype(np.float32),  # joints + object pose
        actions=rng.standard_normal((T, 14)).astype(np.float32),
        authority=authority,
        checkpoint_ids=np.array(["ckpt-b"] * T, dtype=object),
        learner_steps=np.full(T, 4200),
        outcome=outcome,
        success_step=27 if outcome == "success" else None,
        arm_slices=((0, 7), (7, 14)),
    )


def test_round_trip_preserves_every_array(tmp_path: Path) -> None:
    ep = make_episode()
    frames = np.random.default_rng(0).integers(0, 256, (T, 24, 32, 3), dtype=np.uint8)
    write_episode(tmp_path / "ep-a", ep, joint_dim=14, images={"top": frames})
    back = read_episode(tmp_path / "ep-a")
    np.testing.assert_allclose(back.timestamps, ep.timestamps, atol=1e-9)
    np.testing.assert_array_equal(back.proprio, ep.proprio)  # joints + env_state re-joined
    np.testing.assert_array_equal(back.actions, ep.actions)
    np.testing.assert_array_equal(back.authority, ep.authority)
    assert back.outcome is Outcome.SUCCESS and back.success_step == 27
    assert back.arm_slices == ((0, 7), (7, 14))
    # Provenance only where the policy ran (hold tick 25 has no policy arm).
    assert back.learner_steps[0] == 4200 and back.learner_steps[25] == -1
    assert back.checkpoint_ids[0] == "ckpt-b" and back.checkpoint_ids[25] == ""
    assert not back.is_demonstration
    # Images come lazily, only the frames asked for.
    got = back.load_images("top", np.array([3, 29, 3]))
    np.testing.assert_array_equal(got, frames[[3, 29, 3]])
    # Without env state the proprio is the joints only.
    assert read_episode(tmp_path / "ep-a", use_env_state=False).proprio_dim == 14


def test_bad_bags_are_skipped_with_one_line_reasons(tmp_path: Path) -> None:
    folder = tmp_path / "bags"
    folder.mkdir()
    write_episode(folder / "ep-1-good", make_episode("ep-1"), joint_dim=14)
    write_episode(folder / "ep-2-fail", make_episode("ep-2", "failure"), joint_dim=14)
    # Recorder killed before closing: no metadata.yaml.
    write_episode(folder / "ep-3-killed", make_episode("ep-3"), joint_dim=14)
    (folder / "ep-3-killed" / "metadata.yaml").unlink()
    # Truncated file with intact metadata.
    write_episode(folder / "ep-4-trunc", make_episode("ep-4"), joint_dim=14)
    mcap = next((folder / "ep-4-trunc").glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    # Never closed by the writer (exception inside the with-block).
    meta = bf.EpisodeMeta("ep-5", "t", "p", "rollout", (("l", 0, 7), ("r", 7, 14)))
    with pytest.raises(KeyboardInterrupt), bf.EpisodeBagWriter(folder / "ep-5-open", meta):
        raise KeyboardInterrupt
    # Garbage metadata.
    shutil.copytree(folder / "ep-1-good", folder / "ep-6-garbage")
    (folder / "ep-6-garbage" / "metadata.yaml").write_text("{{{{ not yaml")

    episodes, report = read_episodes(folder)
    assert sorted(e.episode_id for e in episodes) == ["ep-1", "ep-2"]
    reasons = dict((p.name, r) for p, r in report.skipped)
    assert set(reasons) == {"ep-3-killed", "ep-4-trunc", "ep-5-open", "ep-6-garbage"}
    assert "never closed the bag" in reasons["ep-3-killed"]
    assert "truncated" in reasons["ep-4-trunc"]
    assert "incomplete" in reasons["ep-5-open"]
    assert "metadata" in reasons["ep-6-garbage"]
    assert all("\n" not in r for r in reasons.values())
    text = report.format()
    assert text.splitlines()[0] == "2 episode bag(s) used, 4 skipped"
    assert "skipped ep-4-trunc" in text


def test_missing_camera_and_missing_folder(tmp_path: Path) -> None:
    write_episode(tmp_path / "ep", make_episode(), joint_dim=14)
    with pytest.raises(BagSkipped, match="missing camera"):
        read_episode(tmp_path / "ep", cameras=["top"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_episodes(tmp_path / "nope")


def test_driver_record_sets_actions_end_and_success_step(tmp_path: Path) -> None:
    """A node-graph bag: the arbiter's commands plus the driver's applied commands.

    Steps 0..9 were sent; the driver clamped step 2, refused step 3, saw the task succeed at
    step 5, and steps 6..9 arrived after the episode was over (never executed; the record of
    step 6 is missing, as when the recorder closes first). The operator marked the outcome at
    step 9.
    """
    meta = bf.EpisodeMeta(
        "ep-g", "transfer_cube", "p", "rollout", (("left", 0, 7), ("right", 7, 14))
    )
    sent = np.arange(10, dtype=np.float32)[:, None] * np.ones(14, np.float32)
    with bf.EpisodeBagWriter(tmp_path / "ep-g", meta) as w:
        for t in range(10):
            t_ns = 1_000_000_000 + t * 20_000_000
            w.write_joint_state(t_ns, [f"j{i}" for i in range(14)], np.zeros(14))
            w.write_command(t_ns, step_index=t, controller=[POLICY, POLICY], action=sent[t])
            if t == 6:
                continue
            over = t >= 7
            w.write_command(
                t_ns + 1000,
                step_index=t,
                controller=[NONE, NONE] if over or t == 3 else [POLICY, POLICY],
                action=sent[t] - 0.5 if t == 2 else sent[t],  # the clamp shortened step 2
                applied=True,
                hold=over or t == 3,
                hold_reason=bf.HOLD_EPISODE_OVER if over else ("joint_limit" if t == 3 else ""),
                clamped=t == 2,
                task_success=t == 5,
            )
        w.finish("success", "operator")
    ep = read_episode(tmp_path / "ep-g", use_env_state=False)
    assert ep.length == 6  # the success ends the episode: steps 6..9 were never executed
    assert ep.success_step == 5  # the simulator's step, not the mark
    assert ep.actions[2, 0] == pytest.approx(1.5)  # what the arm was really sent
    # Clamped and refused steps are nobody's: neither a label anchor nor a target.
    assert ep.authority[:, 0].tolist() == [POLICY, POLICY, NONE, NONE, POLICY, POLICY]
    # Without the driver's record (in-process rollouts) the executed commands stand.
    write_episode(tmp_path / "plain", make_episode("plain"))
    assert read_episode(tmp_path / "plain").length == T


def test_steps_the_driver_never_reported_at_the_end_are_not_steps(tmp_path: Path) -> None:
    """Steps 0..6 were sent; the driver's record of steps 0..4 is in the bag (step 2's is
    missing), the recorder closed at the operator's mark before the records of 5 and 6 came.
    The episode is steps 0..4; step 2, never reported, is nobody's."""
    meta = bf.EpisodeMeta("ep-t", "transfer_cube", "p", "rollout", (("left", 0, 7),))
    with bf.EpisodeBagWriter(tmp_path / "ep-t", meta) as w:
        for t in range(7):
            t_ns = 1_000_000_000 + t * 20_000_000
            w.write_joint_state(t_ns, [f"j{i}" for i in range(7)], np.zeros(7))
            w.write_command(t_ns, step_index=t, controller=[POLICY], action=np.full(7, t))
            if t < 5 and t != 2:
                w.write_command(
                    t_ns + 1000,
                    step_index=t,
                    controller=[POLICY],
                    action=np.full(7, t),
                    applied=True,
                )
        w.finish("failure", "operator")
    ep = read_episode(tmp_path / "ep-t", use_env_state=False)
    assert ep.length == 5
    assert ep.authority[:, 0].tolist() == [POLICY, POLICY, NONE, POLICY, POLICY]


def _late_start_bag(path: Path, first_joint_ms: int, first_move_ms: int) -> None:
    """Steps 0..5 sent every 20 ms from t = 0; the driver's first joint state comes at
    ``first_joint_ms`` (the reset pose, 0.3), its first executed command at ``first_move_ms``
    (the steps before are holds: nothing moved)."""
    meta = bf.EpisodeMeta("ep-l", "transfer_cube", "p", "rollout", (("left", 0, 7),))
    ms = 1_000_000
    with bf.EpisodeBagWriter(path, meta) as w:
        for t in range(6):
            t_ns = 1_000_000_000 + t * 20 * ms
            w.write_command(t_ns, step_index=t, controller=[POLICY], action=np.full(7, 0.3))
        for k, t_ns in enumerate(range(first_joint_ms * ms, 200 * ms, 20 * ms)):
            w.write_joint_state(1_000_000_000 + t_ns, [f"j{i}" for i in range(7)], np.full(7, k))
        for t in range(6):  # the driver's record: steps 0..2 held, 3..5 executed
            sent = 1_000_000_000 + t * 20 * ms
            at = sent + 1000 if t < 3 else 1_000_000_000 + first_move_ms * ms + t * 1000
            w.write_command(
                at,
                step_index=t,
                controller=[POLICY],
                action=np.full(7, 0.3),
                applied=True,
                hold=t < 3,
            )
        w.finish("failure", "operator")


def test_a_late_first_joint_state_counts_while_the_arm_stood_still(tmp_path: Path) -> None:
    """A loaded driver publishes its first joint state 150 ms after step 0 (beyond the 100 ms
    tolerance) but before it executed any command: the arm stood at its reset pose, so the
    early steps take that state. Had the arm moved before the first state, the bag is
    skipped as before."""
    _late_start_bag(tmp_path / "still", first_joint_ms=150, first_move_ms=170)
    ep = read_episode(tmp_path / "still", use_env_state=False)
    assert ep.proprio[:, 0].tolist() == [0.0] * 6  # the first joint state, for every step
    _late_start_bag(tmp_path / "moved", first_joint_ms=150, first_move_ms=120)
    with pytest.raises(BagSkipped, match="nor before the arm first moved"):
        read_episode(tmp_path / "moved", use_env_state=False)


def test_arbiter_clamped_steps_are_nobodys(tmp_path: Path) -> None:
    """In-process bags (no driver record): a step the arbiter's chunk-level safety step
    clamped keeps its executed action but is neither a label anchor nor an imitation target."""
    meta = bf.EpisodeMeta(
        "ep-c", "transfer_cube", "p", "rollout", (("left", 0, 7), ("right", 7, 14))
    )
    with bf.EpisodeBagWriter(tmp_path / "ep-c", meta) as w:
        for t in range(4):
            t_ns = 1_000_000_000 + t * 20_000_000
            w.write_joint_state(t_ns, [f"j{i}" for i in range(14)], np.zeros(14))
            w.write_command(
                t_ns,
                step_index=t,
                controller=[POLICY, POLICY],
                action=np.full(14, t, np.float32),
                clamped=t == 1,
            )
        w.finish("success", "operator")
    ep = read_episode(tmp_path / "ep-c", use_env_state=False)
    assert ep.authority[:, 0].tolist() == [POLICY, NONE, POLICY, POLICY]
    assert ep.actions[1, 0] == 1.0
