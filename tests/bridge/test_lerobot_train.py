"""habc-lerobot-train on a tiny exported dataset, in the LeRobot environment: tiny SmolVLA and
PI0 train a few HABC-weighted steps, zero-weight samples give no gradient, padded steps stay
out of the loss, the checkpoint reloads, a chunk comes out, and the remote backend's client
drives the checkpoint served over openpi's protocol."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from habc_bridge import lerobot_cli
from habc_bridge.core.remote_policy import RemotePolicy, RemotePolicyClient, RemotePolicyConfig
from tests.bridge.conftest import BAG_CAMERAS, lerobot_python

pytestmark = [pytest.mark.timeout(900)]
SCRIPTS = Path(__file__).parent / "lerobot_env"


@pytest.fixture(scope="module")
def tiny_dataset(bags: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lerobot_python()
    out = tmp_path_factory.mktemp("train") / "ds"
    assert lerobot_cli.export_main(["--bags", str(bags), "--out", str(out), "--no-video"]) == 0
    return out


@pytest.fixture(scope="module")
def facts(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    python = lerobot_python()
    out: dict[str, dict] = {}
    for kind in ("smolvla", "pi0"):
        run = tmp_path_factory.mktemp(f"run_{kind}")
        proc = subprocess.run(
            [str(python), str(SCRIPTS / "check_train.py"), str(tiny_dataset), str(run), kind],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FACTS ")]
        assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
        out[kind] = json.loads(lines[-1][len("FACTS ") :])
    return out


@pytest.mark.parametrize("kind", ["smolvla", "pi0"])
def test_weighted_training_facts(facts: dict[str, dict], kind: str) -> None:
    f = facts[kind]
    assert f["trained"]
    assert f["reload_max_diff"] == 0.0  # the checkpoint loads back bit for bit
    # Σ w·ℓ / Σ w with w = (1, 0): changing the zero-weight sample changes no gradient ...
    assert f["zero_weight_grad_diff"] == 0.0
    # ... while with w = (1, 1) it does (the comparison can see a difference).
    assert f["weighted_grad_diff"] > 1e-3
    assert f["no_pad_match"] == 0.0  # our ℓ_i is LeRobot's when nothing is padded
    assert f["pad_steps"] == 7
    assert f["chunk_shape"] == [10, 14] and f["chunk_finite"]


def test_padding_pitfall(facts: dict[str, dict]) -> None:
    # SmolVLA masks action_is_pad itself; PI0 ignores it: its own per-sample loss moves with
    # the padded steps' targets, ours does not count them (they still enter the action
    # expert's input, as LeRobot pads by repeating the last action, like habc).
    assert facts["smolvla"]["pad_masked_diff"] == 0.0
    assert facts["pi0"]["pad_forward_diff"] > 1.0
    assert facts["pi0"]["pad_masked_diff"] < 0.01 * facts["pi0"]["pad_forward_diff"]


def test_trained_checkpoint_served_to_the_remote_backend(facts: dict[str, dict]) -> None:
    python = lerobot_python()
    checkpoint = facts["smolvla"]["checkpoint"]
    proc = subprocess.Popen(
        [str(python), "-m", "habc_bridge.lerobot.serve", "--checkpoint", checkpoint, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(ln) for ln in proc.stdout],
        daemon=True,  # type: ignore[union-attr]
    ).start()
    try:
        uri = None
        while uri is None:
            line = lines.get(timeout=300)
            if m := re.search(r"serving on (ws://127\.0\.0\.1:\d+) \(localhost only", line):
                uri = m.group(1)
        policy = RemotePolicy(
            RemotePolicyClient(uri, request_timeout_s=60.0, connect_timeout_s=30.0),
            RemotePolicyConfig(
                proprio_dim=15,
                horizon=10,
                camera_names=BAG_CAMERAS,
                image_size=(32, 32),
                min_rows=5,
            ),
        )
        rng = np.random.default_rng(0)
        images = {c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in BAG_CAMERAS}
        chunk = policy.sample_actions(np.zeros(15, np.float32), "reach the goal", images=images)
        assert chunk.shape == (10, 14) and chunk.dtype == np.float32
        assert np.all(np.isfinite(chunk))
        assert policy.checkpoint_id.startswith("lerobot-")
        assert policy.client.metadata["policy_type"] == "smolvla"
        policy.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_critic_on_the_vla_backbone(tiny_dataset: Path, tmp_path: Path) -> None:
    """--weights backbone: habc's dual-head critic on the VLA's own features (the paper's
    arrangement); its weights equal Eqs. 5-8 and the weight table worked by hand."""
    proc = subprocess.run(
        [
            str(lerobot_python()),
            str(SCRIPTS / "check_backbone.py"),
            str(tiny_dataset),
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FACTS ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    f = json.loads(lines[-1][len("FACTS ") :])
    assert f["critic_saved"]
    assert f["feature_dim"] == f["vlm_width"]  # φ is the VLM's hidden state, not habc's encoder
    np.testing.assert_allclose(f["weights"], f["weights_by_hand"], rtol=1e-5, atol=1e-6)
    assert f["weights"][1] == 0.0 and f["weights"][2] == 0.0  # failure, unlabeled
    assert f["weights"][0] != f["weights"][3]  # the success window's gate is not the table's 1


@pytest.mark.ros
def test_trained_checkpoint_drives_the_policy_server_node(
    facts: dict[str, dict], ros_env: dict[str, str], tmp_path: Path
) -> None:
    """The whole path: a HABC-weighted LeRobot checkpoint, served over openpi's protocol,
    drives the real policy_server node (remote backend) over DDS."""
    from sensor_msgs.msg import Image, JointState

    from habc_msgs.msg import ActionChunk
    from tests.nodes.conftest import NodeProcess, RosClient

    proc = subprocess.Popen(
        [
            str(lerobot_python()),
            "-m",
            "habc_bridge.lerobot.serve",
            "--port",
            "0",
            "--checkpoint",
            facts["smolvla"]["checkpoint"],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(ln) for ln in proc.stdout],
        daemon=True,  # type: ignore[union-attr]
    ).start()
    client = node = None
    try:
        uri = None
        while uri is None:
            if m := re.search(r"serving on (ws://127\.0\.0\.1:\d+)", lines.get(timeout=300)):
                uri = m.group(1)
        client = RosClient("lerobot_remote_test")
        chunks = client.record(ActionChunk, "/habc/action_chunk", 50)
        joints = client.node.create_publisher(JointState, "/joint_states", 10)
        cams = {
            c: client.node.create_publisher(Image, f"/cameras/{c}/image_raw", 5)
            for c in BAG_CAMERAS
        }

        def publish() -> None:
            stamp = client.node.get_clock().now().to_msg()
            js = JointState()
            js.header.stamp = stamp
            js.position = [0.0] * 15
            joints.publish(js)
            for pub in cams.values():
                img = Image()
                img.header.stamp = stamp
                img.height = img.width = 32
                img.encoding, img.step = "rgb8", 96
                img.data = bytes(32 * 32 * 3)
                pub.publish(img)

        client.node.create_timer(0.05, publish)
        node = NodeProcess(
            "policy_server",
            ros_env,
            tmp_path,
            checkpoint=uri,
            execute_rows=5,
            margin_rows=1,
            remote__cameras=",".join(BAG_CAMERAS),
            remote__image_size=[32, 32],
            remote__proprio_dim=15,
            remote__horizon=10,
            remote__request_timeout_s=60.0,
            remote__connect_timeout_s=30.0,
        )
        client.spin_until(lambda: len(chunks) >= 2, 240.0, lambda: f"chunks\n{node.log()}")
        msg = chunks[-1][1]
        assert msg.checkpoint_id.startswith("lerobot-")
        assert (msg.horizon, msg.action_dim) == (10, 14)
        assert np.all(np.isfinite(np.asarray(msg.actions)))
    finally:
        if node is not None:
            node.stop()
        if client is not None:
            client.close()
        proc.terminate()
        proc.wait(timeout=30)
