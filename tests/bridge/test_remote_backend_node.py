"""The policy server's remote backend as a real node over real DDS, driven by habc's openpi-
protocol server: chunks carry the remote checkpoint's id and equal what that checkpoint
computes locally; a dead server means no chunk at all; a restarted one is reconnected."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from habc_bridge.core.flow_service import FlowPolicyService
from habc_bridge.core.ws_server import PolicyWebsocketServer
from habc_policy.core.checkpoint import load_policy
from tests.nodes.conftest import CONFIG, NodeProcess, RosClient, make_checkpoint

pytestmark = [pytest.mark.ros]

Q = np.linspace(-0.3, 0.3, 14).astype(np.float32)
SEED = 5


def prompt_of_config() -> str:
    """The prompt the node starts with: the last of its parameter files that sets one."""
    import yaml

    from tests.nodes.conftest import PARAMS_FILE

    prompt = ""
    for name in PARAMS_FILE["policy_server"]:
        doc = yaml.safe_load((CONFIG / name).read_text())
        prompt = doc["policy_server"]["ros__parameters"].get("prompt", prompt)
    return prompt


def test_remote_backend_serves_holds_and_reconnects(ros_env: dict[str, str], tmp_path: Path):
    from sensor_msgs.msg import JointState

    from habc_msgs.msg import ActionChunk

    ckpt = tmp_path / "step_000000077"
    manifest = make_checkpoint(ckpt, learner_step=77, proprio_dim=14, horizon=50)
    loaded = load_policy(ckpt)
    server = PolicyWebsocketServer(FlowPolicyService(loaded), port=0).start()
    port = server.port
    client = RosClient("remote_backend_test")
    chunks: list[tuple[float, Any]] = client.record(ActionChunk, "/habc/action_chunk", 50)
    pub = client.node.create_publisher(JointState, "/joint_states", 10)

    def publish_joints() -> None:
        msg = JointState()
        msg.header.stamp = client.node.get_clock().now().to_msg()
        msg.position = Q.astype(np.float64).tolist()
        pub.publish(msg)

    client.node.create_timer(0.02, publish_joints)
    node = NodeProcess(
        "policy_server",
        ros_env,
        tmp_path,
        checkpoint=server.uri,
        seed=SEED,
        remote__cameras="",
        remote__retry_initial_s=0.05,
        remote__retry_max_s=0.2,
        remote__request_timeout_s=2.0,
    )
    try:
        client.spin_until(lambda: len(chunks) >= 3, 60.0, lambda: f"chunks\n{node.log()}")
        prompt = prompt_of_config()
        for _t, msg in chunks[:3]:
            assert msg.checkpoint_id == manifest["checkpoint_id"]
            assert msg.learner_step == 77
            assert (msg.horizon, msg.action_dim) == (50, 14)
            want = loaded.sample_actions(Q, prompt, seed=SEED * 100_003 + msg.chunk_seq)
            np.testing.assert_allclose(
                np.asarray(msg.actions, np.float32).reshape(50, 14), want, rtol=0, atol=1e-6
            )

        server.shutdown()  # the remote dies: no chunk may follow
        client.spin_for(0.3)  # one already on the wire may still land
        dead_at, n_dead = time.monotonic(), len(chunks)
        client.spin_for(1.5)
        assert len(chunks) == n_dead, "a chunk was published while the remote server was dead"
        assert "inference failed" in node.log() and node.alive()

        restarted = PolicyWebsocketServer(FlowPolicyService(loaded), port=port).start()
        try:
            client.spin_until(
                lambda: len(chunks) >= n_dead + 2, 30.0, lambda: f"reconnect\n{node.log()}"
            )
            assert time.monotonic() > dead_at
            assert chunks[-1][1].checkpoint_id == manifest["checkpoint_id"]
        finally:
            restarted.shutdown()
    finally:
        node.stop()
        client.close()
        server.shutdown()
