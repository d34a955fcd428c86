"""The LeRobotDataset layout habc exports and imports, shared by both environments.

numpy only: imported by the main venv (labels sidecar, CLI) and by the LeRobot environment
(``habc_bridge.lerobot``), so the column names and code tables live in exactly one place.

Per-frame columns of an exported dataset (LeRobotDataset v3)::

    observation.images.<cam>   video (or image)  [h, w, 3]   cam = openpi names (cam_high, …)
    observation.state          float32 [p]       proprioception q_t
    action                     float32 [d]       executed action a_t (14 for the X5 pair)
    task                       the episode's language prompt
    habc.authority             int64 [n_arms]    controller per arm (AUTHORITY_CODES)
    habc.outcome               int64             episode outcome z_e (OUTCOME_CODES)
    habc.label_source          int64             window source of the window anchored here
                                                 (SOURCE_CODES: demo, rollout_success, …)
    habc.outcome_label         int64             0/1 outcome label of that window, -1 none
    habc.gate                  float32           g_t (Eq. 7) from the learner's critic; 1 when
                                                 exported without a learner checkpoint
    habc.weight                float32           w_t (Eq. 8: w̃ normalized to unit mean over the
                                                 valid frames of the whole export)
    habc.p_v                   float32           p_v(s_t) from the critic; NaN without one
    habc.checkpoint_id         string            the policy checkpoint that drove this step
                                                 ("" for human / hold steps; a remote policy's
                                                 id for the remote backend)

``meta/habc.json`` records the code tables, the arms, where the weights came from (critic of
which checkpoint, or the source table with g ≡ 1), per episode its bag, id, outcome and
source, and every bag skipped with its reason.

The labels sidecar (``labels.npz`` + ``labels.json``) carries per-frame labels from the main
venv (where habc's critic runs on torch 2.13) to the LeRobot environment that writes the
dataset. Only plain numeric and unicode arrays: loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "habc-lerobot/1"
META_FILE = "habc.json"
LABELS_NPZ = "labels.npz"
LABELS_JSON = "labels.json"

#: Controller codes of ``habc_msgs/ExecutedCommand`` (``CONTROLLER_*``): one line per code.
AUTHORITY_CODES: dict[str, int] = {"none": 0, "policy": 1, "human": 2, "handback": 3}
#: ``habc_msgs/EpisodeEvent`` outcome codes (``bag_format.OUTCOME_CODES``).
OUTCOME_CODES: dict[str, int] = {"unknown": 0, "success": 1, "failure": 2, "aborted": 3}
#: ``habc_learner.core.labeling.Source`` codes.
SOURCE_CODES: dict[str, int] = {
    "demo": 0,
    "rollout_success": 1,
    "rollout_failure": 2,
    "unlabeled": 3,
    "intervention": 4,
}

KEY_STATE = "observation.state"
KEY_ACTION = "action"
IMAGE_PREFIX = "observation.images."
COL_AUTHORITY = "habc.authority"
COL_OUTCOME = "habc.outcome"
COL_SOURCE = "habc.label_source"
COL_OUTCOME_LABEL = "habc.outcome_label"
COL_GATE = "habc.gate"
COL_WEIGHT = "habc.weight"
COL_P_V = "habc.p_v"
COL_CHECKPOINT = "habc.checkpoint_id"
LABEL_ARRAYS = ("source", "outcome_label", "gate", "w_tilde", "weight", "p_v")

X5_ACTION_DIM = 14
X5_ARMS: tuple[tuple[str, int, int], ...] = (("left", 0, 7), ("right", 7, 14))


def code_name(codes: Mapping[str, int], value: int) -> str:
    """The name of ``value`` in a code table; ``ValueError`` naming the valid codes."""
    for name, code in codes.items():
        if code == int(value):
            return name
    raise ValueError(f"code {value} is not one of {dict(codes)}")


# --------------------------------------------------------------------------- labels sidecar
@dataclass(frozen=True)
class EpisodeLabelsOut:
    """Per-frame labels of one episode bag (every array [T])."""

    bag: str
    episode_id: str
    source: np.ndarray
    outcome_label: np.ndarray
    gate: np.ndarray
    w_tilde: np.ndarray
    weight: np.ndarray
    p_v: np.ndarray

    @property
    def length(self) -> int:
        return int(self.source.shape[0])


def write_labels(
    folder: str | Path,
    episodes: Sequence[EpisodeLabelsOut],
    skipped: Sequence[tuple[str, str]],
    info: Mapping[str, Any],
) -> None:
    """Write ``labels.npz`` (arrays) and ``labels.json`` (index, skipped bags, provenance)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    index = []
    for i, ep in enumerate(episodes):
        for name in LABEL_ARRAYS:
            value = np.asarray(getattr(ep, name))
            if value.shape != (ep.length,):
                raise ValueError(f"{ep.bag}: {name} has shape {value.shape}, not ({ep.length},)")
            arrays[f"{i}.{name}"] = value
        index.append({"bag": ep.bag, "episode_id": ep.episode_id, "length": ep.length})
    np.savez(folder / LABELS_NPZ, **arrays)
    doc = {"format": FORMAT, "episodes": index, "skipped": [list(s) for s in skipped]}
    doc["info"] = dict(info)
    (folder / LABELS_JSON).write_text(json.dumps(doc, indent=1))


def read_labels(folder: str | Path) -> tuple[list[EpisodeLabelsOut], list[tuple[str, str]], dict]:
    """Inverse of :func:`write_labels`: (episodes, skipped bags, info)."""
    folder = Path(folder)
    doc = json.loads((folder / LABELS_JSON).read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{folder / LABELS_JSON}: format {doc.get('format')!r}, not {FORMAT!r}")
    with np.load(folder / LABELS_NPZ, allow_pickle=False) as npz:
        episodes = [
            EpisodeLabelsOut(
                bag=e["bag"],
                episode_id=e["episode_id"],
                **{name: npz[f"{i}.{name}"] for name in LABEL_ARRAYS},
            )
            for i, e in enumerate(doc["episodes"])
        ]
    return episodes, [(str(a), str(b)) for a, b in doc["skipped"]], dict(doc["info"])


# --------------------------------------------------------------------------- import mapping
@dataclass(frozen=True)
class ColumnMapping:
    """How a LeRobotDataset's columns become an X5 episode.

    Attributes:
        action_key / state_key: source columns.
        action_index: for each of the X5's 14 action dims, the source column's index.
        state_index: indices of the source state kept as proprioception (None: all of it).
        cameras: habc camera name -> source image column.
        arms: the X5 arm slices written to the bags.
    """

    action_key: str = KEY_ACTION
    action_index: tuple[int, ...] = tuple(range(X5_ACTION_DIM))
    state_key: str = KEY_STATE
    state_index: tuple[int, ...] | None = None
    cameras: tuple[tuple[str, str], ...] = ()
    arms: tuple[tuple[str, int, int], ...] = X5_ARMS

    def __post_init__(self) -> None:
        if len(self.action_index) != X5_ACTION_DIM:
            raise ValueError(
                f"action_index must name one source index for each of the X5's "
                f"{X5_ACTION_DIM} action dims, got {len(self.action_index)}"
            )

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ColumnMapping:
        """From a JSON/YAML mapping file::

        {"action": {"key": "action", "index": [0, 1, …, 13]},
         "state": {"key": "observation.state", "index": [...]},   # optional
         "cameras": {"top": "observation.images.cam_high", …}}      # optional
        """
        allowed = {"action", "state", "cameras"}
        if unknown := sorted(set(doc) - allowed):
            raise ValueError(f"unknown mapping keys {unknown}; valid: {sorted(allowed)}")
        action = doc.get("action", {})
        state = doc.get("state", {})
        return cls(
            action_key=str(action.get("key", KEY_ACTION)),
            action_index=tuple(int(i) for i in action.get("index", range(X5_ACTION_DIM))),
            state_key=str(state.get("key", KEY_STATE)),
            state_index=None if "index" not in state else tuple(int(i) for i in state["index"]),
            cameras=tuple((str(k), str(v)) for k, v in dict(doc.get("cameras", {})).items()),
        )

    def check(self, features: Mapping[str, Mapping[str, Any]]) -> None:
        """Refuse a dataset this mapping does not fit, naming the key, its shape and the fix."""
        for key, index, what in (
            (self.action_key, self.action_index, "action"),
            (self.state_key, self.state_index, "state"),
        ):
            if key not in features:
                raise ValueError(
                    f"{what} column {key!r} is not in the dataset; its columns: "
                    f"{sorted(features)} (declare it in the mapping's '{what}.key')"
                )
            shape = tuple(features[key]["shape"])
            if len(shape) != 1:
                raise ValueError(f"{what} column {key!r} has shape {shape}; a vector is needed")
            if index is not None and (max(index) >= shape[0] or min(index) < 0):
                raise ValueError(
                    f"{what} column {key!r} has {shape[0]} dims, the mapping reads indices "
                    f"{list(index)}; declare the X5's {X5_ACTION_DIM} action dims with "
                    f"'{what}.index' (one source index per X5 dim)"
                )
            if what == "action" and index == tuple(range(X5_ACTION_DIM)) and shape[0] != 14:
                raise ValueError(
                    f"action column {key!r} has {shape[0]} dims, the X5 pair has "
                    f"{X5_ACTION_DIM}; declare 'action.index' (one source index per X5 dim)"
                )
        for cam, key in self.cameras:
            if key not in features or features[key]["dtype"] not in ("image", "video"):
                raise ValueError(
                    f"camera {cam!r} maps to {key!r}, which is not an image/video column; "
                    f"image columns: {sorted(k for k, f in features.items() if f['dtype'] in ('image', 'video'))}"  # noqa: E501
                )
