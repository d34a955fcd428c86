"""openpi's websocket + msgpack-numpy protocol: our server and client against each other and
against the published openpi-client 0.1.2; every failure of the remote ends in no chunk."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from habc_bridge.core import msgpack_numpy
from habc_bridge.core import openpi_protocol as proto
from habc_bridge.core.flow_service import FlowPolicyService
from habc_bridge.core.remote_policy import (
    RemoteIncompatible,
    RemotePolicy,
    RemotePolicyClient,
    RemotePolicyConfig,
    RemoteServerError,
    RemoteTimeout,
    RemoteUnavailable,
)
from habc_bridge.core.ws_server import PolicyWebsocketServer
from habc_policy.core.checkpoint import load_policy
from tests.bridge.conftest import CAMERAS

STATE = np.linspace(-0.5, 0.5, 14).astype(np.float32)


def camera_images(seed: int = 0, size: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in CAMERAS}


def remote(uri: str, **client_kw: Any) -> RemotePolicy:
    cfg = RemotePolicyConfig(camera_names=CAMERAS, image_size=(32, 32), horizon=10, min_rows=5)
    return RemotePolicy(RemotePolicyClient(uri, **client_kw), cfg)


# --------------------------------------------------------------------------- wire format
def test_wire_format_is_byte_identical_to_openpi_client(openpi_client: Any) -> None:
    theirs = openpi_client.msgpack_numpy
    obj = {
        "state": STATE,
        "images": {"cam_high": np.arange(12, dtype=np.uint8).reshape(3, 2, 2)},
        "prompt": "pick up the cube",
        "scalar": np.float32(2.5),  # np.float64 is a Python float: plain msgpack
        "nested": [1, 2.0, None, True],
    }
    ours_bytes = msgpack_numpy.packb(obj)
    assert ours_bytes == theirs.packb(obj)
    back = theirs.unpackb(ours_bytes)
    np.testing.assert_array_equal(back["state"], STATE)
    assert back["state"].dtype == np.float32
    ours_back = msgpack_numpy.unpackb(theirs.packb(obj))
    np.testing.assert_array_equal(ours_back["images"]["cam_high"], obj["images"]["cam_high"])
    assert ours_back["scalar"] == 2.5 and isinstance(ours_back["scalar"], np.float32)
    assert ours_back["state"].flags.writeable


def test_wire_format_refuses_objects_and_bad_lengths() -> None:
    with pytest.raises(msgpack_numpy.WireFormatError, match="object"):
        msgpack_numpy.packb({"x": np.array([object()], dtype=object)})
    forged = msgpack_numpy.packb({"x": np.zeros(3, np.float32)}).replace(b"<f4", b"|O8")
    with pytest.raises(msgpack_numpy.WireFormatError, match="refused dtype"):
        msgpack_numpy.unpackb(forged)
    short = {b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "<f4", b"shape": [3]}
    import msgpack

    with pytest.raises(msgpack_numpy.WireFormatError, match="needs 12 bytes, got 8"):
        msgpack_numpy.unpackb(msgpack.packb(short))
    with pytest.raises(msgpack_numpy.WireFormatError, match="not msgpack"):
        msgpack_numpy.unpackb(b"\xc1garbage")


def test_parse_actions_names_what_is_wrong() -> None:
    good = {"actions": np.ones((10, 14), np.float64)}
    out = proto.parse_actions(good, 14, 5)
    assert out.dtype == np.float32 and out.shape == (10, 14)
    with pytest.raises(proto.ProtocolError, match="no 'actions'"):
        proto.parse_actions({"action": good["actions"]}, 14)
    with pytest.raises(proto.ProtocolError, match=r"\[H, 14\], got \(10, 7\)"):
        proto.parse_actions({"actions": np.ones((10, 7))}, 14)
    with pytest.raises(proto.ProtocolError, match="at least 25"):
        proto.parse_actions(good, 14, 25)
    bad = good["actions"].copy()
    bad[3, 2] = np.nan
    with pytest.raises(proto.ProtocolError, match="non-finite"):
        proto.parse_actions({"actions": bad}, 14)


def test_remote_policy_id() -> None:
    assert proto.remote_policy_id({"checkpoint_id": "abc123"}, "ws://x:1") == "abc123"
    a = proto.remote_policy_id({}, "ws://gpu:8000")
    b = proto.remote_policy_id({"policy": "pi05_aloha"}, "ws://gpu:8000")
    c = proto.remote_policy_id({}, "ws://other:8000")
    assert a.startswith("openpi-") and len(a) == len("openpi-") + 16
    assert len({a, b, c}) == 3
    assert proto.remote_policy_id({}, "ws://gpu:8000") == a


# --------------------------------------------------------------------------- our two ends
@pytest.fixture()
def flow_server(flow_checkpoint: Path):
    loaded = load_policy(flow_checkpoint)
    service = FlowPolicyService(loaded)
    with PolicyWebsocketServer(service, port=0) as server:
        yield server, service, loaded


def test_server_binds_localhost_and_says_so(flow_server: Any) -> None:
    server, _service, _loaded = flow_server
    assert server.host == "127.0.0.1"
    assert "localhost only" in server.describe() and server.uri in server.describe()


def test_our_client_against_our_server(flow_server: Any) -> None:
    server, service, loaded = flow_server
    policy = remote(server.uri)
    images = camera_images(1)
    chunk = policy.sample_actions(STATE, "pick up the cube", images=images, seed=7)
    local = loaded.sample_actions(STATE, "pick up the cube", images=images, seed=7)
    assert chunk.dtype == np.float32 and chunk.shape == (10, 14)
    np.testing.assert_array_equal(chunk, local)
    assert policy.client.metadata == service.metadata
    assert policy.checkpoint_id == loaded.checkpoint_id
    assert policy.learner_step == 42
    assert service.metadata["cameras"] == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    # another seed, another chunk: the answer belongs to this request
    other = policy.sample_actions(STATE, "pick up the cube", images=images, seed=8)
    assert not np.array_equal(other, chunk)
    policy.close()


def test_openpi_client_against_our_server(flow_server: Any, openpi_client: Any) -> None:
    server, service, _loaded = flow_server
    client = openpi_client.websocket_client_policy.WebsocketClientPolicy(
        host="127.0.0.1", port=server.port
    )
    assert client.get_server_metadata() == service.metadata
    images = camera_images(2)
    obs = proto.build_observation(STATE, images, "pick up the cube", seed=3)
    answer = client.infer(obs)
    ours = remote(server.uri).sample_actions(STATE, "pick up the cube", images=images, seed=3)
    assert answer["actions"].dtype == np.float32 and answer["actions"].shape == (10, 14)
    np.testing.assert_array_equal(answer["actions"], ours)
    assert answer["server_timing"]["infer_ms"] > 0
    # openpi's own image layout (HWC, uint8) is accepted too and gives the same chunk
    hwc = dict(
        obs, images={proto.openpi_camera(c, proto.DEFAULT_CAMERA_MAP): images[c] for c in CAMERAS}
    )
    np.testing.assert_array_equal(client.infer(hwc)["actions"], ours)
    # a bad request: openpi's client sees the server's traceback (a text frame)
    with pytest.raises(RuntimeError, match="Error in inference server"):
        client.infer({"state": np.zeros(3, np.float32), "prompt": "x"})


def test_openpi_client_health_check(flow_server: Any) -> None:
    import urllib.request

    server, _service, _loaded = flow_server
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
        assert r.status == 200


# --------------------------------------------------------------------------- failures -> hold
class EchoPolicy:
    """A remote model whose chunk encodes the request: every row is the state it was sent,
    so an answer paired with the wrong request is visible. ``delays`` stalls requests."""

    def __init__(self, metadata: dict[str, Any] | None = None) -> None:
        self.metadata = metadata if metadata is not None else {"action_dim": 14}
        self.delays: list[float] = []
        self.fail_next = False
        self.nan_next = False
        self.calls = 0

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.delays:
            time.sleep(self.delays.pop(0))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model exploded")
        chunk = np.tile(np.asarray(obs["state"], np.float32), (10, 1))
        if self.nan_next:
            self.nan_next = False
            chunk[0, 0] = np.nan
        return {"actions": chunk}


def wait_for(pred: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def test_timeout_drops_the_connection_and_never_pairs_a_late_answer() -> None:
    echo = EchoPolicy()
    echo.delays = [0.6]
    with PolicyWebsocketServer(echo, port=0) as server:
        policy = remote(server.uri, request_timeout_s=0.2, retry_initial_s=0.05)
        first = STATE
        with pytest.raises(RemoteTimeout, match="connection dropped"):
            policy.sample_actions(first, "p", images=camera_images())
        assert not policy.client.connected
        second = STATE + 1.0
        wait_for(lambda: echo.calls == 1 and not echo.delays)
        time.sleep(0.7)  # the late answer to `first` has been sent by now, to a closed socket
        chunk = None
        end = time.monotonic() + 10
        while chunk is None and time.monotonic() < end:
            try:
                chunk = policy.sample_actions(second, "p", images=camera_images())
            except RemoteUnavailable:
                time.sleep(0.02)  # back-off
        assert chunk is not None
        np.testing.assert_array_equal(chunk, np.tile(second, (10, 1)))
        assert policy.client.connects == 2
        policy.close()


def test_dead_server_then_restart_reconnects_with_backoff() -> None:
    echo = EchoPolicy()
    server = PolicyWebsocketServer(echo, port=0).start()
    port = server.port
    policy = remote(server.uri, retry_initial_s=0.05, retry_max_s=0.2, connect_timeout_s=0.5)
    assert policy.sample_actions(STATE, "p", images=camera_images()).shape == (10, 14)
    server.shutdown()
    with pytest.raises(RemoteUnavailable):
        policy.sample_actions(STATE, "p", images=camera_images())
    # inside the back-off nothing is attempted at all
    with pytest.raises(RemoteUnavailable, match="next attempt in"):
        policy.sample_actions(STATE, "p", images=camera_images())
    restarted = PolicyWebsocketServer(EchoPolicy({"checkpoint_id": "new-model"}), port=port)
    with restarted:
        chunk = None
        end = time.monotonic() + 10
        while chunk is None and time.monotonic() < end:
            try:
                chunk = policy.sample_actions(STATE + 2, "p", images=camera_images())
            except RemoteUnavailable:
                time.sleep(0.02)
        assert chunk is not None
        np.testing.assert_array_equal(chunk[0], STATE + 2)
        assert policy.checkpoint_id == "new-model"  # episodes record the model that drove them
    policy.close()


def test_server_error_and_bad_answers_give_no_chunk() -> None:
    echo = EchoPolicy()
    with PolicyWebsocketServer(echo, port=0) as server:
        policy = remote(server.uri, retry_initial_s=0.01)
        echo.fail_next = True
        with pytest.raises(RemoteServerError, match="model exploded"):
            policy.sample_actions(STATE, "p", images=camera_images())
        time.sleep(0.05)
        echo.nan_next = True
        with pytest.raises(RemoteIncompatible, match="non-finite"):
            policy.sample_actions(STATE, "p", images=camera_images())
        time.sleep(0.05)
        np.testing.assert_array_equal(
            policy.sample_actions(STATE, "p", images=camera_images())[0], STATE
        )
        policy.close()


def test_incompatible_metadata_is_refused() -> None:
    with PolicyWebsocketServer(EchoPolicy({"action_dim": 7}), port=0) as server:
        policy = remote(server.uri)
        with pytest.raises(RemoteIncompatible, match="action_dim=7"):
            policy.sample_actions(STATE, "p", images=camera_images())
        assert not policy.client.connected
    short = PolicyWebsocketServer(EchoPolicy({"action_horizon": 3}), port=0)
    with short, pytest.raises(RemoteIncompatible, match="action_horizon 3 < the 5 rows"):
        remote(short.uri).connect()


def test_concurrent_clients_each_get_their_own_answers(flow_server: Any) -> None:
    server, _service, loaded = flow_server
    errors: list[str] = []

    def run(seed: int) -> None:
        policy = remote(server.uri)
        images = camera_images(seed)
        for _ in range(3):
            got = policy.sample_actions(STATE, "p", images=images, seed=seed)
            want = loaded.sample_actions(STATE, "p", images=images, seed=seed)
            if not np.array_equal(got, want):
                errors.append(f"seed {seed}")
        policy.close()

    threads = [threading.Thread(target=run, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
