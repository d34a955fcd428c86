"""The policy server with image policies: frame/joint pairing, stale frames, the episode's
prompt, and privileged-state checkpoints refused on a real robot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.nodes.conftest import NodeProcess, RosClient, make_checkpoint

pytestmark = pytest.mark.ros


def test_pair_observation_by_hand(ros_env: dict[str, str]) -> None:
    from habc_policy.nodes.policy_server import pair_observation

    q = {t: np.full(2, t, np.float32) for t in (9.98, 10.0, 10.02)}
    history = list(q.items())
    # Frames 12 ms apart (one capture); joint states 32, 12 and 8 ms from the newest frame.
    stamp, joints = pair_observation({"a": 10.0, "b": 10.012}, history, 10.05, 0.02, 0.2)
    assert stamp == 10.02 and joints[0] == np.float32(10.02)
    why = pair_observation({"a": 10.0, "b": 10.012}, history, 10.3, 0.02, 0.2)
    assert "too old" in why and "a 0.300 s" in why and "b 0.288 s" in why
    why = pair_observation({"a": 10.0, "b": 10.03}, history, 10.05, 0.02, 0.2)
    assert "0.030 s apart" in why
    why = pair_observation({"a": 10.0}, [(9.9, q[9.98])], 10.05, 0.02, 0.2)
    assert "no joint state within max_camera_joint_skew_s" in why


def test_privileged_checkpoints_are_refused_on_arx(ros_env: dict[str, str], tmp_path: Path) -> None:
    from habc_policy.core.configuration_flow import FlowPolicyConfig
    from habc_policy.nodes.policy_server import privileged_refusal

    state = FlowPolicyConfig(proprio_dim=21, privileged_state_dim=7)
    assert privileged_refusal(state, "sim") == ""
    why = privileged_refusal(state, "arx")
    assert "/habc/env_state" in why and "7 of its 21" in why and "--cameras" in why
    assert privileged_refusal(FlowPolicyConfig(proprio_dim=14, camera_names=("top",)), "arx") == ""

    import json

    ckpt = tmp_path / "state"
    make_checkpoint(ckpt)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["policy_config"]["privileged_state_dim"] == 0
    # Rewrite it as a state policy that reads 7 env-state dims (hashes stay valid: the
    # manifest is not hashed into itself).
    from habc_policy.core import checkpoint as ckpt_mod

    loaded = ckpt_mod.load_policy(ckpt)
    cfg = FlowPolicyConfig.from_dict({**loaded.config.to_dict(), "privileged_state_dim": 7})
    loaded.model.config = cfg
    ckpt_mod.save_policy(tmp_path / "priv", loaded.model, loaded.normalizer, learner_step=5)
    server = NodeProcess(
        "policy_server", ros_env, tmp_path, checkpoint=str(tmp_path / "priv"), backend="arx"
    )
    try:
        assert server.proc.wait(timeout=60) == 2
        assert "needs privileged simulator state" in server.log()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def two_prompt_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image policy trained on two tasks with identical images and joints, told apart only
    by the prompt recorded in their bags (task 'lift' → actions +1, 'push' → −1)."""
    from habc_learner.core.bag_reader import write_episode
    from habc_learner.learn import main
    from tests.integration.test_learn_vision import _task_episode

    root = tmp_path_factory.mktemp("two_prompts")
    images = np.random.default_rng(0).integers(0, 256, (60, 24, 24, 3), dtype=np.uint8)
    for k, (prompt, sign) in enumerate((("lift the red cube", 1.0), ("push the blue plate", -1))):
        for rep in range(2):
            ep = _task_episode(f"task{k}-{rep}", prompt, sign, images)
            write_episode(root / "bags" / ep.episode_id, ep, images={"top": images})
    args = ["--bags", str(root / "bags"), "--out", str(root / "sft"), "--method", "sft"]
    args += ["--steps", "150", "--cameras", "top", "--image-size", "16", "--batch-size", "32"]
    assert main([*args, "--threads", "1"]) == 0
    return root / "sft" / "checkpoints"


def test_served_prompt_follows_the_episode_and_stale_frames_hold(
    ros_env: dict[str, str], tmp_path: Path, two_prompt_checkpoint: Path
) -> None:
    from sensor_msgs.msg import Image, JointState

    from habc_msgs.msg import ActionChunk, EpisodeEvent

    server = NodeProcess(
        "policy_server",
        ros_env,
        tmp_path,
        checkpoint=str(two_prompt_checkpoint),
        prompt="",
        execute_rows=25,
        seed=3,
        # This test is about prompts and stale frames; the pairing rule has its own unit test.
        # Frames and joints are stamped alike here, but a loaded machine delays the joints.
        max_camera_joint_skew_s=0.1,
    )
    client = RosClient("vision_feeder")
    try:
        node = client.node
        joints = node.create_publisher(JointState, "/joint_states", 10)
        camera = node.create_publisher(Image, "/cameras/top/image_raw", 5)
        events = node.create_publisher(EpisodeEvent, "/habc/episode_event", 10)
        chunks = client.record(ActionChunk, "/habc/action_chunk")
        frame = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
        frame_age = {"s": 0.0}

        def publish() -> None:
            now = client.node.get_clock().now()
            js = JointState(position=[0.0] * 14)
            js.header.stamp = now.to_msg()
            joints.publish(js)
            img = Image(height=24, width=24, encoding="rgb8", step=72, data=frame.tobytes())
            t = now.nanoseconds * 1e-9 - frame_age["s"]
            img.header.stamp.sec = int(t)
            img.header.stamp.nanosec = int((t - int(t)) * 1e9)
            camera.publish(img)

        node.create_timer(0.02, publish)

        current = {"prompt": ""}

        def announce() -> None:  # repeated: the server may subscribe after the first one
            if current["prompt"]:
                p = current["prompt"]
                events.publish(EpisodeEvent(episode_id=p, event=EpisodeEvent.EVENT_START, prompt=p))

        node.create_timer(0.25, announce)

        def mean_after(prompt: str) -> float:
            current["prompt"] = prompt
            client.spin_until(lambda: server.log().count(f"prompt {prompt!r}") >= 1, 60, prompt)
            n = len(chunks)
            client.spin_until(lambda: len(chunks) >= n + 2, 60, "two chunks")
            return float(np.mean(chunks[-1][1].actions))

        assert mean_after("push the blue plate") < -0.5
        assert mean_after("lift the red cube") > 0.5
        # Camera frames 1 s old (a frozen camera) with fresh joint states: nothing is served.
        frame_age["s"] = 1.0
        stale_from = server.log().count("camera frames too old")
        client.spin_until(  # the server sees the stale frames (late on a loaded machine)
            lambda: server.log().count("camera frames too old") > stale_from,
            30,
            lambda: f"the stale frames refused\n{server.log()[-1500:]}",
        )
        client.spin_for(1.0)  # a chunk computed from the last fresh frames may still arrive
        n = len(chunks)
        client.spin_for(1.0)
        assert len(chunks) == n, "served from stale camera frames"
        frame_age["s"] = 0.0
        client.spin_until(lambda: len(chunks) > n, 30, "serving again after fresh frames")
    finally:
        client.close()
        server.stop()
