"""Remote-policy benchmark: what openpi's websocket protocol costs per chunk on loopback.

The default-size FlowPolicy (H = 50, d = 14) with three 224×224 cameras (openpi's image size),
random weights, on CPU:

1. in-process ``LoadedPolicy.sample_actions`` (the policy server's local backend);
2. the same checkpoint behind ``PolicyWebsocketServer`` on 127.0.0.1, driven by the remote
   backend's ``RemotePolicy`` (msgpack-numpy encode, websocket, decode, and back);
3. the same server driven by the published openpi-client 0.1.2, when setup.sh vendored it.

Prints p50 / p90 latency per chunk and the remote/local ratio measured in this run (no asserts)::

    source env.sh && python bench/bench_remote_policy.py --n 40
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from habc_bridge.core import openpi_protocol as proto  # noqa: E402
from habc_bridge.core.flow_service import FlowPolicyService  # noqa: E402
from habc_bridge.core.remote_policy import (  # noqa: E402
    RemotePolicy,
    RemotePolicyClient,
    RemotePolicyConfig,
)
from habc_bridge.core.ws_server import PolicyWebsocketServer  # noqa: E402
from habc_policy.core.checkpoint import load_policy  # noqa: E402
from tests.nodes.conftest import make_checkpoint  # noqa: E402

CAMERAS = ("top", "left_wrist", "right_wrist")
SIZE = (224, 224)


def timed(fn, n: int) -> np.ndarray:
    fn()  # warm-up
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return np.asarray(out) * 1000.0


def line(name: str, ms: np.ndarray, base: float | None = None) -> str:
    p50, p90 = np.percentile(ms, 50), np.percentile(ms, 90)
    ratio = f"  ({p50 / base:.2f}× local)" if base else ""
    return f"{name:<34} p50 {p50:7.1f} ms   p90 {p90:7.1f} ms{ratio}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=40, help="chunks per variant")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "step_000000001"
        make_checkpoint(ckpt, proprio_dim=14, cameras=CAMERAS, image_size=SIZE, tiny=False)
        loaded = load_policy(ckpt)
        rng = np.random.default_rng(0)
        images = {c: rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8) for c in CAMERAS}
        state = np.zeros(14, np.float32)
        local = timed(lambda: loaded.sample_actions(state, "pick", images=images), args.n)
        print(line("local sample_actions", local))
        with PolicyWebsocketServer(FlowPolicyService(loaded), port=0) as server:
            remote = RemotePolicy(
                RemotePolicyClient(server.uri, request_timeout_s=10.0),
                RemotePolicyConfig(camera_names=CAMERAS, image_size=SIZE),
            )
            ms = timed(lambda: remote.sample_actions(state, "pick", images=images), args.n)
            print(line("remote backend (ws, loopback)", ms, float(np.percentile(local, 50))))
            obs = proto.build_observation(state, images, "pick")
            print(f"{'request size':<34} {len(proto_bytes(obs)) / 1e6:.2f} MB per observation")
            vendor = ROOT / ".vendor" / "openpi-client"
            if (vendor / "openpi_client").is_dir():
                sys.path.insert(0, str(vendor))
                from openpi_client.websocket_client_policy import WebsocketClientPolicy

                client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
                ms = timed(lambda: client.infer(obs), args.n)
                print(
                    line("openpi-client 0.1.2 (ws, loopback)", ms, float(np.percentile(local, 50)))
                )
            remote.close()
    return 0


def proto_bytes(obs: dict) -> bytes:
    from habc_bridge.core import msgpack_numpy

    return msgpack_numpy.packb(obs)


if __name__ == "__main__":
    sys.exit(main())
