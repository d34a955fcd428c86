"""``habc-serve-policy``: serve a habc checkpoint over openpi's websocket protocol.

    habc-serve-policy --checkpoint runs/bringup/checkpoints/habc [--host 127.0.0.1] [--port 8000]

Any openpi client (``openpi_client.websocket_client_policy.WebsocketClientPolicy``) and the
policy server's ``remote`` backend (``checkpoint:=ws://HOST:PORT``) can then drive it. The
checkpoint is verified (manifest, hashes, tensor shapes) before serving; a root with a
``LATEST`` file serves the checkpoint it names. Binds to 127.0.0.1 unless ``--host`` says
otherwise, and says so at start.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from habc_bridge.core import openpi_protocol as proto
from habc_bridge.core.flow_service import FlowPolicyService
from habc_bridge.core.ws_server import DEFAULT_PORT, LOCALHOST, PolicyWebsocketServer
from habc_policy.core.checkpoint import (
    MANIFEST_NAME,
    CheckpointError,
    latest_checkpoint,
    load_policy,
)


def resolve(path: Path) -> Path:
    """A checkpoint directory, or the one a root's ``LATEST`` names."""
    if (path / MANIFEST_NAME).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path} is neither a checkpoint nor a root with a LATEST file")
    return latest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="habc-serve-policy", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint dir or root")
    p.add_argument("--host", default=LOCALHOST, help="bind address (default: localhost only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompt", default="", help="prompt used when a request carries none")
    p.add_argument(
        "--camera-map",
        default="",
        help="habc:openpi camera names, e.g. 'top:cam_high' (default: top->cam_high, "
        "left_wrist->cam_left_wrist, right_wrist->cam_right_wrist)",
    )
    p.add_argument("--api-key", default=None, help="require 'Authorization: Api-Key KEY'")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        path = resolve(args.checkpoint)
        policy = load_policy(path, args.device)
        service = FlowPolicyService(policy, proto.parse_camera_map(args.camera_map), args.prompt)
        server = PolicyWebsocketServer(service, args.host, args.port, api_key=args.api_key)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"habc-serve-policy: {exc}", file=sys.stderr)
        return 2
    cfg = policy.config
    print(
        f"habc-serve-policy: {policy.checkpoint_id} (learner step {policy.learner_step}) from "
        f"{path}: H={cfg.horizon} d={cfg.action_dim} state={cfg.proprio_dim} "
        f"cameras={service.metadata['cameras']}; {server.describe()}",
        flush=True,
    )
    return server.run()


if __name__ == "__main__":
    sys.exit(main())
