"""Serve a LeRobot checkpoint folder over openpi's websocket protocol (LeRobot environment).

    python -m habc_bridge.lerobot.serve --checkpoint RUN/checkpoints/000100/pretrained_model
        [--host 127.0.0.1] [--port 8000] [--device cpu]

The policy server's remote backend (``checkpoint:=ws://HOST:PORT``) then drives it like any
openpi server. Observations arrive as openpi's ALOHA layout (``state``, ``images`` under openpi
camera names, ``prompt``); the checkpoint's own preprocessor normalizes and tokenizes them,
``predict_action_chunk`` samples, its postprocessor unnormalizes: ``{"actions": [H, d]}``.
Binds to 127.0.0.1 unless ``--host`` says otherwise, and says so at start.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from habc_bridge.core import dataset_schema as S
from habc_bridge.core import openpi_protocol as proto
from habc_bridge.core.ws_server import DEFAULT_PORT, LOCALHOST, PolicyWebsocketServer
from habc_bridge.lerobot import tiny
from habc_bridge.lerobot.train import policy_class


def checkpoint_id(folder: Path) -> str:
    """16 hex digits of sha256 over the weights file: the id episodes record."""
    digest = hashlib.sha256()
    with (folder / "model.safetensors").open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "lerobot-" + digest.hexdigest()[:16]


class LeRobotService:
    """openpi's ``BasePolicy`` over a LeRobot checkpoint folder."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        import json

        from lerobot.policies.factory import make_pre_post_processors

        tiny.prepare_load(folder)
        kind = json.loads((folder / "config.json").read_text())["type"]
        self.policy = policy_class(kind).from_pretrained(folder)
        self.policy.to(device).eval()
        self.pre, self.post = make_pre_post_processors(
            self.policy.config, pretrained_path=str(folder)
        )
        cfg = self.policy.config
        self.cameras = {
            key[len(S.IMAGE_PREFIX) :]: key
            for key in cfg.input_features
            if key.startswith(S.IMAGE_PREFIX)
        }
        self.state_dim = int(cfg.input_features[S.KEY_STATE].shape[0])
        self.action_dim = int(cfg.output_features[S.KEY_ACTION].shape[0])
        self.kind = kind
        self._metadata = {
            "server": "habc-lerobot",
            "policy_type": kind,
            "checkpoint_id": checkpoint_id(folder),
            "action_horizon": int(cfg.chunk_size),
            "action_dim": self.action_dim,
            "state_dim": self.state_dim,
            "cameras": sorted(self.cameras),
            "image_layout": "chw",
        }

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    @torch.no_grad()
    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        parsed = proto.parse_observation(obs)
        if parsed.state.shape != (self.state_dim,):
            raise proto.ProtocolError(
                f"'state' has shape {parsed.state.shape}, this policy needs ({self.state_dim},)"
            )
        if missing := sorted(set(self.cameras) - set(parsed.images)):
            raise proto.ProtocolError(f"observation lacks images {missing}")
        if parsed.seed is not None:
            torch.manual_seed(parsed.seed)
        batch: dict[str, Any] = {
            key: torch.from_numpy(parsed.images[cam].transpose(2, 0, 1).copy())[None].float()
            / 255.0
            for cam, key in self.cameras.items()
        }
        batch[S.KEY_STATE] = torch.from_numpy(parsed.state)[None]
        batch["task"] = [parsed.prompt]
        self.policy.reset()
        chunk = self.post(self.policy.predict_action_chunk(self.pre(batch)))
        actions = np.asarray(chunk.detach().cpu().numpy()[0], dtype=np.float32)
        return {proto.KEY_ACTIONS: actions}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="habc_bridge.lerobot.serve", description=__doc__)
    p.add_argument("--checkpoint", required=True, type=Path, help="pretrained_model folder")
    p.add_argument("--host", default=LOCALHOST, help="bind address (default: localhost only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    try:
        service = LeRobotService(args.checkpoint, args.device)
        server = PolicyWebsocketServer(service, args.host, args.port)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"habc_bridge.lerobot.serve: {exc}", file=sys.stderr)
        return 2
    md = service.metadata
    print(
        f"serving {md['policy_type']} {md['checkpoint_id']} from {args.checkpoint}: "
        f"H={md['action_horizon']} d={md['action_dim']} cameras={md['cameras']}; "
        f"{server.describe()}",
        flush=True,
    )
    return server.run()


if __name__ == "__main__":
    sys.exit(main())
