"""habc-learn on image bags: joints-only proprio, decode-once cache, prompts from the bags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from habc_learner.core.bag_reader import write_episode
from habc_learner.core.episode import POLICY, Episode, scenario_episode
from habc_learner.learn import LearnerJob, LearnerJobConfig, main
from habc_policy.core.checkpoint import latest_checkpoint, load_policy

SIZE = 16


def _image_bags(folder: Path, scenarios: list[str], first_seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, scenario in enumerate(scenarios):
        seed = first_seed + i
        ep = scenario_episode(scenario, seed=seed, length=60)
        frames = np.random.default_rng(seed).integers(0, 256, (60, 24, 24, 3), dtype=np.uint8)
        # 14 joints on /joint_states; the scenario's remaining proprio dims go to the
        # privileged /habc/env_state, which an image policy must never read.
        write_episode(
            folder / f"{scenario}-{seed}",
            ep,
            joint_dim=14,
            images={"top": frames, "left_wrist": frames[:, ::-1].copy()},
        )


def test_image_rounds_from_bags_alone_with_joints_only_proprio(tmp_path: Path) -> None:
    bags, out = tmp_path / "bags", tmp_path / "learner"
    _image_bags(bags / "demos", ["demo", "demo"], 0)
    _image_bags(bags / "r1", ["takeover_success", "autonomous_failure"], 10)
    assert scenario_episode("demo", seed=0, length=60).proprio_dim > 14  # env state exists
    args = ["--bags", str(bags), "--out", str(out), "--batch-size", "8", "--threads", "1"]
    vision = ["--cameras", "top,left_wrist", "--image-size", str(SIZE), "--min-new", "1"]
    assert main([*args, *vision, "--method", "habc", "--steps", "2"]) == 0
    policy = load_policy(latest_checkpoint(out / "checkpoints"))
    cfg = policy.config
    assert cfg.camera_names == ("top", "left_wrist") and cfg.image_size == (SIZE, SIZE)
    assert cfg.proprio_dim == 14 and cfg.privileged_state_dim == 0  # /habc/env_state unread
    assert cfg.image_augment == "shift"
    # Every bag was decoded once into the cache beside the learner's state.
    entries = sorted((out / "image_cache").iterdir())
    assert len(entries) == 4
    for entry in entries:
        meta = json.loads((entry / "entry.json").read_text())
        assert meta["frames"] == {"top": 60, "left_wrist": 60}
        assert (entry / "top.u8").stat().st_size == 60 * SIZE * SIZE * 3
    # A second round on new bags continues the run; the cached bags are not decoded again.
    _image_bags(bags / "r2", ["two_takeovers"], 20)
    job = LearnerJob(
        LearnerJobConfig(
            bag_dirs=(bags,),
            out_dir=out,
            steps_per_round=2,
            min_new_episodes=1,
            batch_size=8,
            cameras=("top", "left_wrist"),
            image_size=(SIZE, SIZE),
            progress=False,
        )
    )
    assert job.image_cache is not None and job.image_cache.decoded == 0  # restart: all found
    assert len(job.scan().used) == 1 and job.image_cache.decoded == 1
    summary = job.run_round()
    assert summary.learner_step == 4 and "time/data_s" in summary.means
    job.close()
    # A job whose cameras differ from its checkpoint's is refused with both named.
    other = LearnerJob(
        LearnerJobConfig(bag_dirs=(bags,), out_dir=out, cameras=("top",), progress=False)
    )
    _image_bags(bags / "r3", ["demo"], 30)
    other.scan()
    try:
        other.run_round()
    except ValueError as exc:
        assert "['top', 'left_wrist']" in str(exc) and "['top']" in str(exc)
    else:
        raise AssertionError("a camera mismatch must be refused")


def _task_episode(episode_id: str, prompt: str, sign: float, images: np.ndarray) -> Episode:
    length = images.shape[0]
    return Episode(
        episode_id=episode_id,
        task_id=prompt.split()[0],
        prompt=prompt,
        timestamps=1.0 + 0.02 * np.arange(length),
        proprio=np.zeros((length, 14), np.float32),
        actions=np.full((length, 14), sign, np.float32),
        authority=np.full((length, 2), POLICY, np.uint8),
        checkpoint_ids=np.array([""] * length, dtype=object),
        learner_steps=np.full(length, -1),
        outcome="success",
        success_step=length - 1,
        arm_slices=((0, 7), (7, 14)),
        is_demonstration=True,
    )


def test_two_prompts_on_the_same_images_give_different_chunks(tmp_path: Path) -> None:
    """Two tasks recorded on identical images and joints, told apart only by the prompt in
    the bags' metadata: after SFT the prompt given at serving time picks the task's actions."""
    images = np.random.default_rng(0).integers(0, 256, (60, 24, 24, 3), dtype=np.uint8)
    bags = tmp_path / "bags"
    prompts = {"lift the red cube": 1.0, "push the blue plate": -1.0}
    for k, (prompt, sign) in enumerate(prompts.items()):
        for rep in range(2):
            ep = _task_episode(f"task{k}-{rep}", prompt, sign, images)
            write_episode(bags / ep.episode_id, ep, images={"top": images})
    out = tmp_path / "sft"
    args = ["--bags", str(bags), "--out", str(out), "--method", "sft", "--steps", "150"]
    args += ["--cameras", "top", "--image-size", "16", "--batch-size", "32", "--threads", "1"]
    assert main(args) == 0
    policy = load_policy(latest_checkpoint(out / "checkpoints"))
    obs = {"top": images[5]}  # served at the recorded size: resized like the cache did
    q = np.zeros(14, np.float32)
    chunks = {p: policy.sample_actions(q, p, images=obs, seed=0) for p in prompts}
    lifted, pushed = chunks["lift the red cube"], chunks["push the blue plate"]
    assert lifted.mean() > 0.5 and pushed.mean() < -0.5, (lifted.mean(), pushed.mean())
    # Same prompt, same seed: the same chunk (the difference is the prompt's, not noise's).
    again = policy.sample_actions(q, "lift the red cube", images=obs, seed=0)
    np.testing.assert_allclose(again, lifted, atol=1e-6)


@pytest.mark.sim
def test_habc_learn_trains_an_image_policy_from_sim_recorded_bags(tmp_path: Path) -> None:
    """Bags the simulator wrote with rendered camera frames (and its privileged state, which
    the image policy leaves unread) → an SFT round of a two-camera policy."""
    from habc_sim.record_demos import main as record

    demos = tmp_path / "demos"
    cams = ["--cameras", "top", "left_wrist", "--image-size", "24", "32"]
    assert record(["-n", "2", "--out", str(demos), "--max-steps", "60", "--quiet", *cams]) == 0
    out = tmp_path / "sft"
    args = ["--bags", str(demos), "--out", str(out), "--method", "sft", "--steps", "2"]
    args += ["--cameras", "top,left_wrist", "--image-size", "16", "--batch-size", "8"]
    assert main([*args, "--threads", "1"]) == 0
    policy = load_policy(latest_checkpoint(out / "checkpoints"))
    assert policy.config.camera_names == ("top", "left_wrist")
    assert policy.config.proprio_dim == 14 and policy.config.privileged_state_dim == 0
    for entry in (out / "image_cache").iterdir():
        frames = json.loads((entry / "entry.json").read_text())["frames"]
        assert frames["top"] == frames["left_wrist"] == 60  # one rendered frame per tick
        first = np.fromfile(entry / "top.u8", np.uint8, 16 * 16 * 3).reshape(16, 16, 3)
        assert first.std() > 5  # a rendered scene, not a blank frame
    chunk = policy.sample_actions(
        np.zeros(14, np.float32),
        "pick up the cube",
        images={
            "top": np.zeros((24, 32, 3), np.uint8),
            "left_wrist": np.zeros((24, 32, 3), np.uint8),
        },
        seed=0,
    )
    assert chunk.shape == (50, 14) and np.isfinite(chunk).all()
