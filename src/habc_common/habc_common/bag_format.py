"""The on-disk episode format: one rosbag2 (MCAP) directory per episode.

This module is the single source of truth for topic names, message types and the
``custom_data`` keys that the episode recorder, the scripted-demonstration recorder and the bag
reader share. It needs only the pure-Python ``rosbags`` library (never rclpy), so learner jobs
run on machines without ROS. The bags are standard rosbag2: ``ros2 bag info`` and Foxglove read
them, because every connection stores its message definition and RIHS01 type hash.

Layout of one episode bag (all stamps on the control clock, nanoseconds):

====================================  ==================================  ====================
topic                                 type                                when
====================================  ==================================  ====================
``/joint_states``                     ``sensor_msgs/msg/JointState``      every control tick
``/habc/executed_command``            ``habc_msgs/msg/ExecutedCommand``   every control tick
``/habc/action_chunk``                ``habc_msgs/msg/ActionChunk``       each served chunk
``/habc/episode_event``               ``habc_msgs/msg/EpisodeEvent``      start and end
``/joy``                              ``sensor_msgs/msg/Joy``             operator input
``/cameras/<name>/image_raw``         ``sensor_msgs/msg/Image``           camera frames
``/cameras/<name>/image_raw/compressed`` ``sensor_msgs/msg/CompressedImage`` camera frames
``/habc/env_state``                   ``std_msgs/msg/Float32MultiArray``  sim only: privileged
                                                                          object state
====================================  ==================================  ====================

Observation of control step ``t`` = the newest message of each observation topic stamped at or
before the ``ExecutedCommand`` of step ``t``.

Bags recorded through the node graph also hold the driver's ``applied_command`` of each step
(matched by ``episode_id`` and ``step_index``): the action after the safety layer, whether it
was refused (``hold``), shortened (``clamped``) or not executed at all because the episode was
already over (``hold_reason == "episode_over"``), and the step at which the simulator saw the
task succeed (``task_success``). The reader takes actions, the success step ``T_s`` and the end
of the episode from it. In-process rollouts have no safety layer and stop stepping at the
episode's end, so their executed commands are what the arm did.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from habc_common import topics

FORMAT_VERSION = "1"

# The recorded topics, by their names in :mod:`habc_common.topics` (the one place they are
# written; the graph's nodes publish them under the same names).
TOPIC_JOINT_STATES = topics.JOINT_STATES
TOPIC_EXECUTED_COMMAND = topics.EXECUTED_COMMAND
TOPIC_ACTION_CHUNK = topics.ACTION_CHUNK
TOPIC_EPISODE_EVENT = topics.EPISODE_EVENT
TOPIC_JOY = topics.JOY
TOPIC_ENV_STATE = topics.ENV_STATE
TOPIC_APPLIED_COMMAND = topics.APPLIED_COMMAND
HOLD_EPISODE_OVER = topics.HOLD_EPISODE_OVER
camera_topic = topics.camera_topic


MSGTYPE_JOINT_STATE = "sensor_msgs/msg/JointState"
MSGTYPE_EXECUTED_COMMAND = "habc_msgs/msg/ExecutedCommand"
MSGTYPE_ACTION_CHUNK = "habc_msgs/msg/ActionChunk"
MSGTYPE_EPISODE_EVENT = "habc_msgs/msg/EpisodeEvent"
MSGTYPE_JOY = "sensor_msgs/msg/Joy"
MSGTYPE_IMAGE = "sensor_msgs/msg/Image"
MSGTYPE_COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
MSGTYPE_FLOAT32_MULTI_ARRAY = "std_msgs/msg/Float32MultiArray"

# custom_data keys of metadata.yaml (values are strings).
KEY_FORMAT_VERSION = "habc.format_version"
KEY_EPISODE_ID = "habc.episode_id"
KEY_TASK = "habc.task"
KEY_PROMPT = "habc.prompt"
KEY_SOURCE = "habc.source"  # "demo" | "rollout"
KEY_OUTCOME = "habc.outcome"  # "success" | "failure" | "aborted" | "unknown"
KEY_MARKED_BY = "habc.marked_by"
KEY_SUCCESS_STEP = "habc.success_step"  # control step at which success was reached, or ""
KEY_NUM_STEPS = "habc.num_steps"
KEY_COMPLETE = "habc.complete"  # "true" once the episode was closed cleanly
KEY_ARMS = "habc.arms"  # e.g. "left:0:7,right:7:14"

OUTCOMES = ("success", "failure", "aborted", "unknown")
SOURCES = ("demo", "rollout")

# Must match habc_msgs/msg/ExecutedCommand.msg and EpisodeEvent.msg.
CONTROLLER_NONE = 0
CONTROLLER_POLICY = 1
CONTROLLER_HUMAN = 2
CONTROLLER_HANDBACK = 3
EVENT_START = 0
EVENT_END = 1
OUTCOME_CODES = {"unknown": 0, "success": 1, "failure": 2, "aborted": 3}

HABC_MSG_NAMES = ("ActionChunk", "ExecutedCommand", "EpisodeEvent")


def find_habc_msgs_dir() -> Path:
    """Directory holding ``habc_msgs``' ``.msg`` files.

    Looked up in every prefix of ``AMENT_PREFIX_PATH`` (an installed workspace or a system ROS
    install), then in this repository's source tree.
    """
    candidates = [
        Path(prefix) / "share" / "habc_msgs" / "msg"
        for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)
        if prefix
    ]
    # src/habc_common/habc_common/bag_format.py -> src/habc_msgs/msg
    candidates.append(Path(__file__).resolve().parents[2] / "habc_msgs" / "msg")
    for path in candidates:
        if all((path / f"{name}.msg").is_file() for name in HABC_MSG_NAMES):
            return path
    raise FileNotFoundError(
        "habc_msgs message definitions not found; looked in: "
        + ", ".join(str(p) for p in candidates)
    )


_TYPESTORE: Typestore | None = None


def typestore() -> Typestore:
    """The ROS 2 Kilted typestore with the habc_msgs types registered (built once)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        store = get_typestore(Stores.ROS2_KILTED)
        msg_dir = find_habc_msgs_dir()
        types: dict[str, Any] = {}
        for name in HABC_MSG_NAMES:
            text = (msg_dir / f"{name}.msg").read_text()
            types.update(get_types_from_msg(text, f"habc_msgs/msg/{name}"))
        store.register(types)
        _TYPESTORE = store
    return _TYPESTORE


def stamp_from_ns(t_ns: int) -> Any:
    """``builtin_interfaces/msg/Time`` for ``t_ns`` nanoseconds."""
    if t_ns < 0:
        raise ValueError(f"timestamps must be >= 0 ns, got {t_ns}")
    time_cls = typestore().types["builtin_interfaces/msg/Time"]
    return time_cls(sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))


def header(t_ns: int, frame_id: str = "") -> Any:
    """``std_msgs/msg/Header`` stamped ``t_ns``."""
    return typestore().types["std_msgs/msg/Header"](stamp=stamp_from_ns(t_ns), frame_id=frame_id)


def read_custom_data(path: str | Path) -> dict[str, str]:
    """``custom_data`` of the bag at ``path`` (``{}`` when it has none).

    Raises ``FileNotFoundError`` when the bag has no ``metadata.yaml`` (a writer that was killed
    before closing it) and ``ValueError`` when the file is not rosbag2 metadata.
    """
    meta_path = Path(path) / "metadata.yaml"
    try:
        doc = yaml.safe_load(meta_path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{meta_path}: not valid YAML ({exc})") from exc
    info = doc.get("rosbag2_bagfile_information") if isinstance(doc, dict) else None
    if not isinstance(info, dict):
        raise ValueError(f"{meta_path}: no rosbag2_bagfile_information")
    custom = info.get("custom_data") or {}
    return {str(k): str(v) for k, v in custom.items()}


@dataclass(frozen=True)
class EpisodeMeta:
    """What an episode bag says about itself in ``custom_data``."""

    episode_id: str
    task: str
    prompt: str
    source: str
    arms: tuple[tuple[str, int, int], ...]

    def __post_init__(self) -> None:
        if not self.episode_id or "/" in self.episode_id:
            raise ValueError(f"episode_id must be non-empty without '/', got {self.episode_id!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if not self.arms:
            raise ValueError("arms must name at least one arm")


def encode_arms(arms: Iterable[tuple[str, int, int]]) -> str:
    """``(("left", 0, 7), ("right", 7, 14))`` -> ``"left:0:7,right:7:14"``."""
    return ",".join(f"{name}:{lo}:{hi}" for name, lo, hi in arms)


def decode_arms(text: str) -> tuple[tuple[str, int, int], ...]:
    """Inverse of :func:`encode_arms`; raises ``ValueError`` on malformed text."""
    arms = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"malformed arm spec {item!r} in {text!r}")
        name, lo, hi = parts[0], int(parts[1]), int(parts[2])
        if not 0 <= lo < hi:
            raise ValueError(f"arm {name!r} has empty action slice {lo}:{hi}")
        arms.append((name, lo, hi))
    return tuple(arms)


class EpisodeBagWriter:
    """Writes one episode into a rosbag2 MCAP directory, message by message.

    The bag is marked complete only by :meth:`finish`; a writer that dies before that leaves a
    bag whose ``custom_data`` says ``habc.complete: "false"`` (or no metadata at all), which the
    reader treats as incomplete and never learns from.

    Use as a context manager; leaving the block by an exception closes the bag as aborted.
    """

    def __init__(self, path: str | Path, meta: EpisodeMeta) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"episode bag already exists: {self.path}")
        self.meta = meta
        self._store = typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._connections: dict[str, Any] = {}
        self._finished = False
        self._num_steps = 0

    def __enter__(self) -> EpisodeBagWriter:
        self._writer.open()
        self._set_common_custom_data()
        self._writer.set_custom_data(KEY_COMPLETE, "false")
        self._writer.set_custom_data(KEY_OUTCOME, "unknown")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._finished:
            reason = f"writer exited early: {exc_type.__name__}" if exc_type else "not finished"
            self._writer.set_custom_data(KEY_OUTCOME, "aborted")
            self._writer.set_custom_data(KEY_MARKED_BY, reason)
        self._writer.close()

    def _set_common_custom_data(self) -> None:
        m = self.meta
        for key, value in (
            (KEY_FORMAT_VERSION, FORMAT_VERSION),
            (KEY_EPISODE_ID, m.episode_id),
            (KEY_TASK, m.task),
            (KEY_PROMPT, m.prompt),
            (KEY_SOURCE, m.source),
            (KEY_ARMS, encode_arms(m.arms)),
        ):
            self._writer.set_custom_data(key, value)

    def _connection(self, topic: str, msgtype: str) -> Any:
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self._store)
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise ValueError(f"topic {topic} already carries {conn.msgtype}, not {msgtype}")
        return conn

    def write_raw(self, topic: str, msgtype: str, t_ns: int, cdr: bytes) -> None:
        """Write an already CDR-serialized message (e.g. from ``rclpy.serialize_message``)."""
        self._writer.write(self._connection(topic, msgtype), int(t_ns), cdr)

    def write(self, topic: str, msgtype: str, t_ns: int, msg: Any) -> None:
        """Serialize a rosbags message object and write it."""
        self.write_raw(topic, msgtype, t_ns, self._store.serialize_cdr(msg, msgtype))

    def msg(self, msgtype: str, **fields: Any) -> Any:
        """Construct a message object of ``msgtype`` from this writer's typestore."""
        return self._store.types[msgtype](**fields)

    # Typed writers of the episode topics --------------------------------------------------
    def write_joint_state(
        self,
        t_ns: int,
        names: Sequence[str],
        positions: np.ndarray,
        velocities: np.ndarray | None = None,
    ) -> None:
        """``/joint_states``: positions (rad; grippers 0 closed … 1 open) and velocities."""
        self.write(
            TOPIC_JOINT_STATES,
            MSGTYPE_JOINT_STATE,
            t_ns,
            self.msg(
                MSGTYPE_JOINT_STATE,
                header=header(t_ns),
                name=list(names),
                position=np.asarray(positions, dtype=np.float64),
                velocity=np.zeros(0) if velocities is None else np.asarray(velocities, np.float64),
                effort=np.zeros(0),
            ),
        )

    def write_env_state(self, t_ns: int, values: np.ndarray) -> None:
        """``/habc/env_state``: privileged object state (simulation only)."""
        layout = self.msg("std_msgs/msg/MultiArrayLayout", dim=[], data_offset=0)
        self.write(
            TOPIC_ENV_STATE,
            MSGTYPE_FLOAT32_MULTI_ARRAY,
            t_ns,
            self.msg(
                MSGTYPE_FLOAT32_MULTI_ARRAY,
                layout=layout,
                data=np.asarray(values, dtype=np.float32),
            ),
        )

    def write_image(self, t_ns: int, camera: str, rgb: np.ndarray) -> None:
        """``/cameras/<camera>/image_raw``: an ``H×W×3`` uint8 RGB frame as ``rgb8``."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"camera {camera!r}: expected H×W×3 uint8, got {rgb.shape}")
        height, width = rgb.shape[:2]
        self.write(
            camera_topic(camera),
            MSGTYPE_IMAGE,
            t_ns,
            self.msg(
                MSGTYPE_IMAGE,
                header=header(t_ns, frame_id=f"{camera}_optical_frame"),
                height=height,
                width=width,
                encoding="rgb8",
                is_bigendian=0,
                step=3 * width,
                data=rgb.reshape(-1),
            ),
        )

    def write_command(
        self,
        t_ns: int,
        *,
        step_index: int,
        controller: Sequence[int],
        action: np.ndarray,
        hold_reason: str = "",
        checkpoint_id: str = "",
        chunk_seq: int = 0,
        chunk_row: int = 0,
        learner_step: int = -1,
        applied: bool = False,
        hold: bool | None = None,
        clamped: bool = False,
        task_success: bool = False,
    ) -> None:
        """``/habc/executed_command`` of one control step (and count the step).

        With ``applied=True`` it writes the driver's ``applied_command`` of that step instead
        (not counted as a step); ``hold`` defaults to "some arm is tagged NONE".
        """
        controller = np.asarray(controller, dtype=np.uint8)
        self.write(
            TOPIC_APPLIED_COMMAND if applied else TOPIC_EXECUTED_COMMAND,
            MSGTYPE_EXECUTED_COMMAND,
            t_ns,
            self.msg(
                MSGTYPE_EXECUTED_COMMAND,
                header=header(t_ns),
                episode_id=self.meta.episode_id,
                step_index=int(step_index),
                controller=controller,
                action=np.asarray(action, dtype=np.float32),
                hold=bool((controller == CONTROLLER_NONE).any()) if hold is None else bool(hold),
                hold_reason=hold_reason,
                checkpoint_id=checkpoint_id,
                chunk_seq=int(chunk_seq),
                chunk_row=int(chunk_row),
                learner_step=int(learner_step),
                clamped=bool(clamped),
                task_success=bool(task_success),
            ),
        )
        if not applied:
            self._num_steps += 1

    def write_event(
        self, t_ns: int, event: int, outcome: str = "unknown", marked_by: str = "", reason: str = ""
    ) -> None:
        """``/habc/episode_event``: ``EVENT_START`` or ``EVENT_END`` with an outcome."""
        if outcome not in OUTCOME_CODES:
            raise ValueError(f"outcome must be one of {tuple(OUTCOME_CODES)}, got {outcome!r}")
        self.write(
            TOPIC_EPISODE_EVENT,
            MSGTYPE_EPISODE_EVENT,
            t_ns,
            self.msg(
                MSGTYPE_EPISODE_EVENT,
                header=header(t_ns),
                episode_id=self.meta.episode_id,
                event=event,
                outcome=OUTCOME_CODES[outcome],
                marked_by=marked_by,
                task=self.meta.task,
                prompt=self.meta.prompt,
                reason=reason,
            ),
        )

    def count_step(self) -> None:
        """Count one executed control step written with :meth:`write_raw` / :meth:`write`."""
        self._num_steps += 1

    def finish(self, outcome: str, marked_by: str, success_step: int | None = None) -> None:
        """Mark the episode closed with ``outcome``; called once, before the bag closes."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        if success_step is not None and outcome != "success":
            raise ValueError(f"success_step given for outcome {outcome!r}")
        self._writer.set_custom_data(KEY_OUTCOME, outcome)
        self._writer.set_custom_data(KEY_MARKED_BY, marked_by)
        self._writer.set_custom_data(
            KEY_SUCCESS_STEP, "" if success_step is None else str(int(success_step))
        )
        self._writer.set_custom_data(KEY_NUM_STEPS, str(self._num_steps))
        self._writer.set_custom_data(KEY_COMPLETE, "true")
        self._finished = True
