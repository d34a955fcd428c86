"""openpi's websocket policy protocol: what travels, in which layout, and how it is checked.

The contract of openpi's ``scripts/serve_policy.py`` (``WebsocketPolicyServer``) and
``openpi_client.websocket_client_policy.WebsocketClientPolicy``:

1. The client opens a websocket (no compression, no size limit; an optional
   ``Authorization: Api-Key <key>`` header).
2. The server sends one binary frame first: the policy **metadata**, a msgpack-numpy map.
3. Then, per request, the client sends an **observation** map and the server answers with an
   **action** map holding ``"actions"``: ``[H, d]`` (plus timing maps). A server that fails
   sends a *text* frame with the traceback and closes the connection (code 1011).
4. ``GET /healthz`` answers 200 (openpi's health check).

Observation layout (openpi's ALOHA convention, which the X5 pair shares: 14 dims, 3 cameras)::

    {"state": float32 [p],
     "images": {"cam_high": uint8 [3, h, w], "cam_left_wrist": ..., "cam_right_wrist": ...},
     "prompt": str}

habc's camera names map to openpi's through :data:`DEFAULT_CAMERA_MAP` (configurable). Images
travel channel-first (``"chw"``), as openpi's ALOHA inputs expect; a server of ours also accepts
``[h, w, 3]``.

Metadata habc's own server sends (an openpi server sends what its train config declares,
often ``{}``): ``checkpoint_id``, ``learner_step``, ``action_horizon``, ``action_dim``,
``state_dim``, ``cameras`` (openpi names), ``image_size`` ``[h, w]``, ``image_layout``,
``server``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: habc camera name -> openpi camera key (names not listed travel unchanged).
DEFAULT_CAMERA_MAP: dict[str, str] = {
    "top": "cam_high",
    "left_wrist": "cam_left_wrist",
    "right_wrist": "cam_right_wrist",
}
IMAGE_LAYOUTS = ("chw", "hwc")
KEY_STATE = "state"
KEY_IMAGES = "images"
KEY_PROMPT = "prompt"
KEY_ACTIONS = "actions"
#: Optional request key of habc's own server: seeds the sampling noise (openpi ignores it).
KEY_SEED = "habc_seed"
REMOTE_ID_PREFIX = "openpi-"


class ProtocolError(ValueError):
    """A message that breaks the protocol (missing key, wrong shape or dtype, non-finite)."""


def parse_camera_map(text: str) -> dict[str, str]:
    """``"top:cam_high,left_wrist:cam_left_wrist"`` -> dict; ``""`` -> the default map."""
    if not text.strip():
        return dict(DEFAULT_CAMERA_MAP)
    out: dict[str, str] = {}
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"camera map entry {item!r} is not 'habc_name:openpi_name'")
        out[parts[0]] = parts[1]
    return out


def openpi_camera(camera: str, camera_map: Mapping[str, str]) -> str:
    """The openpi key of habc camera ``camera``."""
    return camera_map.get(camera, camera)


def encode_image(img: np.ndarray, layout: str) -> np.ndarray:
    """uint8 ``[h, w, 3]`` (as habc's cameras deliver) -> the wire layout."""
    if layout not in IMAGE_LAYOUTS:
        raise ValueError(f"image layout {layout!r} is not one of {IMAGE_LAYOUTS}")
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"images must be uint8 [h, w, 3], got {img.dtype} {img.shape}")
    return np.ascontiguousarray(img.transpose(2, 0, 1) if layout == "chw" else img)


def decode_image(img: Any, name: str) -> np.ndarray:
    """A wire image (``[3, h, w]`` or ``[h, w, 3]`` uint8) -> uint8 ``[h, w, 3]``."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
        what = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ProtocolError(f"images[{name!r}] must be a uint8 3-D array, got {what}")
    if img.shape[0] == 3 and img.shape[2] != 3:
        return np.ascontiguousarray(img.transpose(1, 2, 0))
    if img.shape[2] == 3:
        return img
    raise ProtocolError(f"images[{name!r}] must be [3, h, w] or [h, w, 3], got {img.shape}")


def build_observation(
    state: np.ndarray,
    images: Mapping[str, np.ndarray] | None,
    prompt: str,
    camera_map: Mapping[str, str] = DEFAULT_CAMERA_MAP,
    layout: str = "chw",
    seed: int | None = None,
) -> dict[str, Any]:
    """habc's observation (raw state [p], camera -> uint8 [h, w, 3], prompt) -> a request map."""
    state = np.asarray(state, dtype=np.float32)
    if state.ndim != 1 or not np.all(np.isfinite(state)):
        raise ValueError(f"state must be a finite 1-D vector, got shape {state.shape}")
    obs: dict[str, Any] = {
        KEY_STATE: state,
        KEY_IMAGES: {
            openpi_camera(c, camera_map): encode_image(img, layout)
            for c, img in (images or {}).items()
        },
        KEY_PROMPT: str(prompt),
    }
    if seed is not None:
        obs[KEY_SEED] = int(seed)
    return obs


@dataclass(frozen=True)
class ParsedObservation:
    """A request as a server of ours reads it: state [p], openpi camera -> [h, w, 3], prompt."""

    state: np.ndarray
    images: dict[str, np.ndarray]
    prompt: str
    seed: int | None


def parse_observation(obs: Any, default_prompt: str = "") -> ParsedObservation:
    """Check and unpack a request map (see the module docstring)."""
    if not isinstance(obs, dict):
        raise ProtocolError(f"an observation must be a map, got {type(obs).__name__}")
    if KEY_STATE not in obs:
        raise ProtocolError(f"observation has no {KEY_STATE!r}; keys: {sorted(obs)}")
    state = np.asarray(obs[KEY_STATE])
    if state.ndim != 1 or state.dtype.kind not in "fiu" or not np.all(np.isfinite(state)):
        raise ProtocolError(f"{KEY_STATE!r} must be a finite numeric 1-D array, got {state.shape}")
    raw_images = obs.get(KEY_IMAGES, {})
    if not isinstance(raw_images, dict):
        raise ProtocolError(f"{KEY_IMAGES!r} must be a map of camera name -> image")
    images = {str(k): decode_image(v, str(k)) for k, v in raw_images.items()}
    prompt = obs.get(KEY_PROMPT, default_prompt)
    if not isinstance(prompt, str):
        raise ProtocolError(f"{KEY_PROMPT!r} must be a string, got {type(prompt).__name__}")
    seed = obs.get(KEY_SEED)
    if seed is not None and not isinstance(seed, (int, np.integer)):
        raise ProtocolError(f"{KEY_SEED!r} must be an integer, got {type(seed).__name__}")
    return ParsedObservation(
        state.astype(np.float32), images, prompt, None if seed is None else int(seed)
    )


def parse_actions(response: Any, action_dim: int, min_horizon: int = 1) -> np.ndarray:
    """A server's answer -> a finite float32 chunk ``[H, action_dim]`` with H >= min_horizon.

    Raises :class:`ProtocolError` naming what is wrong: no ``"actions"``, wrong rank or width,
    too short, not numeric, non-finite.
    """
    if not isinstance(response, dict) or KEY_ACTIONS not in response:
        keys = sorted(response) if isinstance(response, dict) else type(response).__name__
        raise ProtocolError(f"response has no {KEY_ACTIONS!r}; got {keys}")
    actions = response[KEY_ACTIONS]
    if not isinstance(actions, np.ndarray) or actions.dtype.kind not in "fiu":
        raise ProtocolError(f"{KEY_ACTIONS!r} must be a numeric array")
    if actions.ndim != 2 or actions.shape[1] != action_dim:
        raise ProtocolError(f"{KEY_ACTIONS!r} must be [H, {action_dim}], got {actions.shape}")
    if actions.shape[0] < min_horizon:
        raise ProtocolError(f"chunk of {actions.shape[0]} rows, at least {min_horizon} needed")
    if not np.all(np.isfinite(actions)):
        raise ProtocolError(f"{KEY_ACTIONS!r} holds non-finite values")
    return actions.astype(np.float32)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return {"dtype": value.dtype.str, "shape": list(value.shape), "sha": _sha(value.tobytes())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return _sha(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def remote_policy_id(metadata: Mapping[str, Any], uri: str) -> str:
    """The checkpoint id that names a remote policy in chunks and episodes.

    A server that names its checkpoint (habc's own sends ``checkpoint_id``) is recorded by that
    id, so a habc checkpoint keeps one id whether it runs locally or remotely. Any other server
    is ``"openpi-"`` + 16 hex digits of sha256 over its URI and canonical metadata: a different
    model (different metadata) or a different server gets a different id.
    """
    named = metadata.get("checkpoint_id")
    if isinstance(named, str) and named:
        return named
    canonical = json.dumps({"uri": uri, "metadata": _jsonable(dict(metadata))}, sort_keys=True)
    return REMOTE_ID_PREFIX + _sha(canonical.encode())


def metadata_int(metadata: Mapping[str, Any], key: str, default: int) -> int:
    """An integer metadata field, or ``default`` when absent; ``ProtocolError`` when malformed."""
    value = metadata.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ProtocolError(f"metadata {key!r} must be an integer, got {value!r}")
    return int(value)
