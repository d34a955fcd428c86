"""habc's own flow policy as an openpi-protocol policy (``metadata`` + ``infer``).

Wraps a :class:`~habc_policy.core.checkpoint.LoadedPolicy` (a verified habc checkpoint) so
:class:`~habc_bridge.core.ws_server.PolicyWebsocketServer` can serve it to any openpi client:
openpi camera keys are mapped back to habc's camera names, images of another size are
resized (area interpolation, as the policy server does), the chunk comes back unnormalized and
clipped in robot units, ``[H, d]`` float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from habc_bridge.core import openpi_protocol as proto
from habc_policy.core.checkpoint import LoadedPolicy

SERVER_NAME = "habc-flow"


def resize_rgb(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[h, w, 3]`` -> ``size`` (h, w), area interpolation (unchanged if it fits)."""
    if img.shape[:2] == tuple(size):
        return img
    import cv2

    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)


class FlowPolicyService:
    """openpi's ``BasePolicy`` over a loaded habc checkpoint."""

    def __init__(
        self,
        policy: LoadedPolicy,
        camera_map: Mapping[str, str] = proto.DEFAULT_CAMERA_MAP,
        default_prompt: str = "",
    ) -> None:
        self.policy = policy
        self.camera_map = dict(camera_map)
        self.default_prompt = default_prompt
        self._wire_to_habc = {
            proto.openpi_camera(c, self.camera_map): c for c in policy.config.camera_names
        }

    @property
    def metadata(self) -> dict[str, Any]:
        cfg = self.policy.config
        return {
            "server": SERVER_NAME,
            "checkpoint_id": self.policy.checkpoint_id,
            "learner_step": self.policy.learner_step,
            "action_horizon": cfg.horizon,
            "action_dim": cfg.action_dim,
            "state_dim": cfg.proprio_dim,
            "cameras": sorted(self._wire_to_habc),
            "image_size": list(cfg.image_size),
            "image_layout": "chw",
        }

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Request map -> ``{"actions": float32 [H, d]}``; ``ProtocolError`` on bad input."""
        cfg = self.policy.config
        parsed = proto.parse_observation(obs, self.default_prompt)
        if parsed.state.shape != (cfg.proprio_dim,):
            raise proto.ProtocolError(
                f"'state' has shape {parsed.state.shape}, this policy needs ({cfg.proprio_dim},)"
            )
        images = None
        if cfg.camera_names:
            missing = sorted(set(self._wire_to_habc) - set(parsed.images))
            if missing:
                raise proto.ProtocolError(
                    f"observation lacks images {missing}; got {sorted(parsed.images)}"
                )
            images = {
                habc: resize_rgb(parsed.images[wire], cfg.image_size)
                for wire, habc in self._wire_to_habc.items()
            }
        chunk = self.policy.sample_actions(
            parsed.state, parsed.prompt, images=images, seed=parsed.seed
        )
        return {proto.KEY_ACTIONS: np.ascontiguousarray(chunk, dtype=np.float32)}
