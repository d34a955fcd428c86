"""The policy server: observations in, action chunks out, checkpoints hot-swapped.

Thin adapter around :class:`habc_policy.core.checkpoint.LoadedPolicy` or, when ``checkpoint``
is ``ws://HOST:PORT``, the remote backend :class:`habc_bridge.core.remote_policy.RemotePolicy`
(openpi's websocket protocol; parameters ``remote.*``). Node ``policy_server``:

=============================  ==================================  ============================
name                           type                                what
=============================  ==================================  ============================
``/joint_states`` (sub)        ``sensor_msgs/JointState``          proprioception; its stamp is
                                                                   the observation time
``/habc/env_state`` (sub)      ``std_msgs/Float32MultiArray``      ``backend: sim`` only:
                                                                   appended to the
                                                                   proprioception of state-only
                                                                   policies trained with it
``/cameras/<cam>/image_raw``   ``sensor_msgs/Image``               one per camera the policy
(sub)                                                              was trained on
``/habc/episode_event`` (sub)  ``habc_msgs/EpisodeEvent``          the prompt of each started
                                                                   episode (as recorded) is
                                                                   the one served
``/habc/chunk_refused`` (sub)  ``std_msgs/Header``                 a chunk the arbiter dropped on
                                                                   arrival: the next one is
                                                                   computed at once
``/habc/action_chunk`` (pub)   ``habc_msgs/ActionChunk``           stamped with the observation
                                                                   time, checkpoint id, learner
                                                                   step
``/habc/announce_checkpoint``  ``habc_msgs/AnnounceCheckpoint``    verify + hot-swap; on any
(srv)                                                              failure the old checkpoint
                                                                   keeps serving; paths only
                                                                   inside ``checkpoint_roots``
``/habc/policy_heartbeat``     ``std_msgs/Header``                 ``heartbeat_hz``, stamped
(pub)                                                              now, from its own thread
=============================  ==================================  ============================

Inference runs in a worker thread, never in a ROS callback, and that thread takes the
observation streams (joints, env state, camera frames) itself before each decision: they are
subscribed on a second node, ``<name>_observations``, which no executor spins, so the
executor does no work per observation and never holds the interpreter lock the heartbeat thread
needs. A hot-swap loads in its own callback group while observations keep arriving. The worker
starts the next chunk at the trigger row of :class:`~habc_policy.core.chunking.RequestTimer`
(``execute_rows`` minus the p99 inference latency plus the p99 transport latency of the joint
states, in rows, minus a margin that grows after a late chunk), from the newest observation, so
the next chunk arrives before the current one's executable rows run out. An episode's start
event restarts the schedule: the first chunk of an episode is computed at once from the first
observation stamped after the start. It never computes from an observation older than
``max_observation_age_s`` (a dead driver gives no chunks, and the arbiter then holds).

Policies with cameras: the frames must be at most ``max_image_age_s`` old (a frozen or dead
camera: nothing is published, the arbiter holds) and at most ``max_camera_joint_skew_s`` (one
control period, 0.02 s) apart, and the joint state paired with them is the one stamped nearest
to them, within ``max_camera_joint_skew_s`` (:func:`pair_observation`). An image policy trained
by the learner has joints-only proprioception, so ``use_env_state: auto`` never reads
``/habc/env_state`` for it; on ``backend: arx`` the topic is not even subscribed, and a
checkpoint that needs the simulator's privileged state (``privileged_state_dim > 0``) is
refused at start and at every announcement.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, Header

from habc_common import topics
from habc_msgs.msg import ActionChunk, EpisodeEvent
from habc_msgs.srv import AnnounceCheckpoint
from habc_policy.core.checkpoint import (
    MANIFEST_NAME,
    MODEL_FILE,
    CheckpointError,
    LoadedPolicy,
    latest_checkpoint,
    load_policy,
)
from habc_policy.core.chunking import RequestTimer
from habc_policy.core.gc_pauses import GcPauses
from habc_policy.core.serving_guard import resolve_under_roots, use_env_state
from habc_policy.nodes import declare

NODE_NAME = "policy_server"
#: A heartbeat interval longer than this many periods is logged as a stall of this process.
STALL_PERIODS = 5
USE_ENV_STATE = ("auto", "true", "false")
BACKENDS = ("sim", "arx")
JOINT_HISTORY = 50  # joint states kept to pair with camera frames (1 s at 50 Hz)


@dataclass(frozen=True)
class ServerParams:
    """Every parameter of the node (``config/policy_server.yaml``)."""

    checkpoint: str
    prompt: str
    execute_rows: int
    control_period_s: float
    device: str
    use_env_state: str
    max_observation_age_s: float
    margin_rows: int
    seed: int
    torch_threads: int
    checkpoint_roots: tuple[str, ...] = ()
    heartbeat_hz: float = 100.0
    backend: str = "sim"
    max_image_age_s: float = 0.2
    follow_episode_prompt: bool = True
    max_camera_joint_skew_s: float = 0.02
    max_margin_rows: int = 10

    @classmethod
    def declare(cls, node: Any) -> ServerParams:
        d = declare
        p = cls(
            checkpoint=d(
                node, "checkpoint", "", "checkpoint dir, or a root whose LATEST names one"
            ),
            prompt=d(node, "prompt", "", "language prompt given to the policy"),
            execute_rows=int(d(node, "execute_rows", 25, "rows of each chunk the arbiter runs")),
            control_period_s=float(d(node, "control_period_s", 0.02, "seconds between rows")),
            device=d(node, "device", "cpu", "torch device"),
            use_env_state=d(node, "use_env_state", "auto", f"one of {USE_ENV_STATE}"),
            max_observation_age_s=float(
                d(node, "max_observation_age_s", 0.2, "older observations are not served")
            ),
            margin_rows=int(d(node, "margin_rows", 3, "rows of slack before a chunk runs out")),
            seed=int(d(node, "seed", -1, "sampling noise seed (-1: fresh noise)")),
            torch_threads=int(d(node, "torch_threads", 1, "torch intra-op threads")),
            checkpoint_roots=tuple(
                r.strip()
                for r in str(
                    d(node, "checkpoint_roots", "", "comma-separated dirs announced paths may use")
                ).split(",")
                if r.strip()
            ),
            heartbeat_hz=float(d(node, "heartbeat_hz", 100.0, "heartbeat rate (Hz)")),
            backend=d(node, "backend", "sim", f"robot backend, one of {BACKENDS}"),
            max_image_age_s=float(
                d(node, "max_image_age_s", 0.2, "older camera frames are refused: hold")
            ),
            follow_episode_prompt=bool(
                d(node, "follow_episode_prompt", True, "serve each episode's recorded prompt")
            ),
            max_camera_joint_skew_s=float(
                d(node, "max_camera_joint_skew_s", 0.02, "frames/joints pairing tolerance (s)")
            ),
            max_margin_rows=int(
                d(node, "max_margin_rows", 10, "margin rows may grow to this after late chunks")
            ),
        )
        if p.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {p.backend!r}")
        if not p.checkpoint:
            raise ValueError("parameter 'checkpoint' must name a checkpoint directory or root")
        if not p.prompt.strip() and not p.follow_episode_prompt:
            raise ValueError(
                "parameter 'prompt' is empty: give the task's language prompt (or "
                "follow_episode_prompt: true to take it from each episode's start event)"
            )
        if not (math.isfinite(p.heartbeat_hz) and p.heartbeat_hz >= 10.0):
            raise ValueError(f"heartbeat_hz must be >= 10, got {p.heartbeat_hz}")
        if p.use_env_state not in USE_ENV_STATE:
            raise ValueError(f"use_env_state must be one of {USE_ENV_STATE}, got {p.use_env_state}")
        if p.execute_rows < 1 or p.margin_rows < 0 or p.torch_threads < 1:
            raise ValueError("execute_rows >= 1, margin_rows >= 0 and torch_threads >= 1 needed")
        if p.max_margin_rows < p.margin_rows:
            raise ValueError(
                f"max_margin_rows {p.max_margin_rows} must be >= margin_rows {p.margin_rows}"
            )
        for name in (
            "control_period_s",
            "max_observation_age_s",
            "max_image_age_s",
            "max_camera_joint_skew_s",
        ):
            value = getattr(p, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")
        return p


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or the one its ``LATEST`` names."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path} is neither a checkpoint nor a root with a LATEST file")
    return latest


REMOTE_SCHEMES = ("ws://", "wss://")


def remote_backend(node: Node, p: ServerParams) -> Any:
    """The ``remote`` backend: ``checkpoint`` is ``ws://HOST:PORT`` of an openpi-protocol policy
    server (openpi's ``serve_policy.py``, ``habc-serve-policy``); parameters ``remote.*``.
    Every failure there (timeout, lost or refused connection, bad answer) is an inference
    failure here: no chunk is published, and the arbiter holds."""
    from habc_bridge.core.remote_policy import RemotePolicyError, remote_policy_from_params

    policy = remote_policy_from_params(
        lambda name, default, what: declare(node, name, default, what), p.checkpoint, p.execute_rows
    )
    try:
        policy.connect()
    except RemotePolicyError as exc:
        node.get_logger().warning(f"{exc}; holding until it answers")
    return policy


def image_to_array(msg: Image, size: tuple[int, int]) -> np.ndarray:
    """``sensor_msgs/Image`` (rgb8 / bgr8) -> uint8 ``[h, w, 3]`` RGB at ``size`` (h, w)."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (rgb8 or bgr8)")
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    rows = raw.reshape(msg.height, msg.step)[:, : msg.width * 3]
    img = rows.reshape(msg.height, msg.width, 3)
    if msg.encoding == "bgr8":
        img = img[:, :, ::-1]
    if img.shape[:2] != tuple(size):
        import cv2

        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def privileged_refusal(config: Any, backend: str) -> str:
    """Why a policy cannot run on ``backend`` for lack of privileged simulator state ("": it
    can). A real robot has no ``/habc/env_state``."""
    privileged = getattr(config, "privileged_state_dim", 0)  # a remote policy declares none
    if backend == "sim" or privileged == 0:
        return ""
    return (
        f"the checkpoint needs privileged simulator state (/habc/env_state, "
        f"{privileged} of its {config.proprio_dim} proprio dims), which "
        f"backend {backend!r} does not have: refused. Serve an image policy trained with "
        f"cameras and joints only (habc-learn --cameras top,left_wrist,right_wrist)"
    )


def pair_observation(
    frame_stamps: dict[str, float],
    joint_history: list[tuple[float, np.ndarray]],
    now: float,
    max_skew_s: float,
    max_image_age_s: float,
) -> tuple[float, np.ndarray] | str:
    """The joint state that goes with the newest camera frames, or why there is none.

    The frames (one per camera, stamped at capture) must be at most ``max_image_age_s`` old and
    at most ``max_skew_s`` (one control period by default) apart; the joint state is the one
    stamped nearest to the newest frame, and it must lie within ``max_skew_s`` of it.
    """
    newest, oldest = max(frame_stamps.values()), min(frame_stamps.values())
    stale = {c: now - t for c, t in frame_stamps.items() if now - t > max_image_age_s}
    if stale:
        ages = ", ".join(f"{c} {age:.3f} s" for c, age in sorted(stale.items()))
        return f"camera frames too old ({ages} > max_image_age_s {max_image_age_s}): holding"
    if newest - oldest > max_skew_s:
        return (
            f"camera frames {newest - oldest:.3f} s apart (> max_camera_joint_skew_s "
            f"{max_skew_s} s): waiting for one capture of every camera"
        )
    if not joint_history:
        return "no joint state yet"
    stamp, q = min(joint_history, key=lambda item: abs(item[0] - newest))
    if abs(stamp - newest) > max_skew_s:
        return (
            f"no joint state within max_camera_joint_skew_s ({max_skew_s} s) of the camera "
            f"frames (nearest {abs(stamp - newest):.3f} s away)"
        )
    return stamp, q


def check_compatible(
    new: LoadedPolicy, old: LoadedPolicy | None, execute_rows: int, backend: str = "sim"
) -> str:
    """Why ``new`` cannot replace ``old`` ("" when it can)."""
    c = new.config
    if c.horizon < execute_rows:
        return f"horizon {c.horizon} < execute_rows {execute_rows}"
    if why := privileged_refusal(c, backend):
        return why
    if old is None:
        return ""
    o = old.config
    for name in ("action_dim", "proprio_dim", "camera_names", "image_size"):
        if getattr(c, name) != getattr(o, name):
            return f"{name} {getattr(c, name)} != serving checkpoint's {getattr(o, name)}"
    return ""


class PolicyServer(Node):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.params = p = ServerParams.declare(self)
        import torch

        torch.set_num_threads(p.torch_threads)
        if p.checkpoint.startswith(REMOTE_SCHEMES):  # the remote backend (habc_bridge)
            path, policy = p.checkpoint, remote_backend(self, p)
        else:
            path = resolve_checkpoint(p.checkpoint)
            policy = load_policy(path, p.device)
        if why := check_compatible(policy, None, p.execute_rows, p.backend):
            raise CheckpointError(f"{path}: {why}")
        self._policy = policy
        # Announced checkpoints load only from these (default: the root the server started
        # from): anyone on the DDS domain can call the announce service.
        # A remote policy has no start folder: without configured roots nothing is announced in.
        if isinstance(path, str):
            start_roots: tuple[Path, ...] = ()
        elif (Path(p.checkpoint) / "LATEST").exists():
            start_roots = (Path(p.checkpoint),)
        else:
            start_roots = (path.parent,)
        self._roots = tuple(
            str(Path(r).expanduser().resolve()) for r in (p.checkpoint_roots or start_roots)
        )
        self._lock = threading.Lock()
        self._joints: tuple[float, np.ndarray] | None = None  # (stamp s, positions)
        self._joint_history: deque[tuple[float, np.ndarray]] = deque(maxlen=JOINT_HISTORY)
        self._env: np.ndarray | None = None
        self._images: dict[str, tuple[float, Image]] = {}  # camera -> (stamp s, newest frame)
        self._prompt = p.prompt
        self._seq = 0
        self._timer = RequestTimer(
            p.execute_rows, p.control_period_s, p.margin_rows, p.max_margin_rows
        )
        self._episode_start: float | None = None  # set by a start event, taken by the worker
        self._stop = threading.Event()
        self._pub = self.create_publisher(ActionChunk, topics.ACTION_CHUNK, 10)
        # The observation streams are taken by the inference thread itself, before each
        # decision (_take_observations), not by the executor: their 50 Hz callbacks cost
        # main()'s multi-threaded executor a quarter of a core of Python (py-spy, sim graph),
        # and the interpreter lock it held meanwhile kept the heartbeat thread from running
        # for up to 0.5 s on a loaded machine: the arbiter then held the arm
        # (policy_heartbeat_lost). Their subscriptions live on a node no executor spins.
        # It keeps the process's topic remappings and namespace (global arguments) but not a
        # node-name remap meant for the server (`__node:=`): its own name wins, so the graph
        # never shows two nodes of one name. No parameter services, no rosout of its own.
        obs_name = f"{self.get_name()}_observations"
        self._obs_node = rclpy.create_node(
            obs_name,
            namespace=self.get_namespace(),
            context=self.context,
            cli_args=["--ros-args", "-r", f"__node:={obs_name}"],
            start_parameter_services=False,
            enable_rosout=False,
        )
        self._polled: list[tuple[Any, Callable[[Any, dict | None], None]]] = []
        self._poll(JointState, topics.JOINT_STATES, self._on_joints, JOINT_HISTORY)
        if p.backend == "sim":  # a real robot has no privileged state to read
            self._poll(Float32MultiArray, topics.ENV_STATE, self._on_env, 1)
        for cam in policy.config.camera_names:  # only the newest frame is ever used
            self._poll(Image, topics.camera_topic(cam), partial(self._on_image, cam), 1)
        if p.follow_episode_prompt:
            self.create_subscription(EpisodeEvent, topics.EPISODE_EVENT, self._on_episode, 10)
        # A chunk the arbiter dropped on arrival: the next is computed at once (rare: the
        # executor serves it).
        self._refused: list[float] = []
        self.replans = 0  # chunks computed at once because the arbiter dropped the last one
        self.create_subscription(Header, topics.CHUNK_REFUSED, self._on_refused, 10)
        # Loading + verifying a checkpoint may take seconds: its own callback group (and the
        # multi-threaded executor of main()) keeps episode events and refusals served
        # meanwhile; the observations never wait on the executor.
        self.create_service(
            AnnounceCheckpoint,
            topics.ANNOUNCE_CHECKPOINT,
            self._on_announce,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self._worker = threading.Thread(target=self._run, name="inference", daemon=True)
        self._worker.start()
        # The heartbeat: the arbiter holds within a few ticks once it stops (a dead server's
        # last chunk must not run out its rows). Its own thread: never behind inference.
        self._heartbeat_pub = self.create_publisher(Header, topics.POLICY_HEARTBEAT, 10)
        self.stalls = 0  # heartbeat-thread stalls past STALL_PERIODS periods
        self._gc = GcPauses().install()
        self._heartbeat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._heartbeat.start()
        self.get_logger().info(
            f"serving {policy.checkpoint_id} (learner step {policy.learner_step}) from {path}: "
            f"H={policy.config.horizon} d={policy.config.action_dim} "
            f"cameras={list(policy.config.camera_names)}; announced checkpoints only from "
            f"{list(self._roots)}"
        )

    def _beat(self) -> None:
        period = 1.0 / self.params.heartbeat_hz
        last = time.monotonic()
        while not self._stop.wait(period):
            now = time.monotonic()
            gap, last = now - last, now
            if gap > STALL_PERIODS * period:
                # This thread did not run for a while: the arbiter may have held the arm
                # (policy_heartbeat_lost). Say how long, and how much of it was garbage
                # collection (which holds the interpreter).
                self.stalls += 1
                gc_s = self._gc.pause_s_since(now - gap)
                self.get_logger().warning(
                    f"heartbeat thread stalled {gap * 1e3:.0f} ms (garbage collection "
                    f"{gc_s * 1e3:.0f} ms of it); {self.stalls} stalls so far",
                    throttle_duration_sec=1.0,
                )
            msg = Header(frame_id=NODE_NAME)
            msg.stamp = self.get_clock().now().to_msg()
            try:
                self._heartbeat_pub.publish(msg)
            except Exception:  # shutting down: the context is gone
                if not self._stop.is_set():
                    raise
                return

    # Inputs (the inference thread takes them) --------------------------------------------
    def _poll(
        self, msg_type: Any, topic: str, handler: Callable[[Any, dict | None], None], depth: int
    ) -> None:
        sub = self._obs_node.create_subscription(msg_type, topic, lambda _m: None, depth)
        self._polled.append((sub, handler))

    def _take_observations(self) -> None:
        """Hand every observation message delivered so far, oldest first, to its handler,
        with its message info (the receive time). The inference thread's only: one taker."""
        for sub, handler in self._polled:
            with sub.handle:
                while (taken := sub.handle.take_message(sub.msg_type, sub.raw)) is not None:
                    handler(*taken)

    def _received_s(self, info: dict | None) -> float:
        """When a message arrived: its receive time when the middleware gives one on the
        node's clock (system time), else now."""
        received = (info or {}).get("received_timestamp", 0)
        if received > 0 and not self.get_clock().ros_time_is_active:
            return received * 1e-9
        return self._now_s()

    def _on_joints(self, msg: JointState, info: dict | None = None) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        transport = self._received_s(info) - stamp
        with self._lock:
            self._timer.add_transport(transport)
            self._joints = (stamp, np.asarray(msg.position, dtype=np.float32))
            self._joint_history.append(self._joints)

    def _on_env(self, msg: Float32MultiArray, info: dict | None = None) -> None:
        with self._lock:
            self._env = np.asarray(msg.data, dtype=np.float32)

    def _on_image(self, camera: str, msg: Image, info: dict | None = None) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self._lock:
            self._images[camera] = (stamp, msg)

    def _on_episode(self, msg: EpisodeEvent) -> None:
        """The prompt recorded with the episode is the one the policy is given."""
        if msg.event == EpisodeEvent.EVENT_START:
            start = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            with self._lock:
                self._episode_start = start if start > 0 else self._now_s()
        if msg.event == EpisodeEvent.EVENT_START and msg.prompt:
            with self._lock:
                changed, self._prompt = msg.prompt != self._prompt, msg.prompt
            if changed:
                self.get_logger().info(f"episode {msg.episode_id}: prompt {msg.prompt!r}")

    def _on_refused(self, msg: Header) -> None:
        with self._lock:
            self._refused.append(msg.stamp.sec + msg.stamp.nanosec * 1e-9)

    @property
    def prompt(self) -> str:
        with self._lock:
            return self._prompt

    # Observation --------------------------------------------------------------------------
    def _observation(
        self, policy: LoadedPolicy
    ) -> tuple[float, np.ndarray, dict[str, np.ndarray] | None] | str:
        """(stamp, proprio, images) of the newest observation, or why there is none."""
        with self._lock:
            joints, env, images = self._joints, self._env, dict(self._images)
            history = list(self._joint_history)
        if joints is None:
            return "no joint state yet"
        cfg = policy.config
        if why := privileged_refusal(cfg, self.params.backend):
            return why
        imgs = None
        if cfg.camera_names:
            missing = [c for c in cfg.camera_names if c not in images]
            if missing:
                return f"no image yet from {missing}"
            paired = pair_observation(
                {c: images[c][0] for c in cfg.camera_names},
                history,
                self.get_clock().now().nanoseconds * 1e-9,
                self.params.max_camera_joint_skew_s,
                self.params.max_image_age_s,
            )
            if isinstance(paired, str):
                return paired
            joints = paired
            imgs = {c: image_to_array(images[c][1], cfg.image_size) for c in cfg.camera_names}
        stamp, q = joints
        env_dim = None if env is None else int(env.shape[0])
        feed_env = self.params.backend == "sim" and use_env_state(  # a robot has no such state
            self.params.use_env_state, cfg.proprio_dim, q.shape[0], env_dim
        )
        if feed_env:
            if env is None:
                return "no env state yet"
            q = np.concatenate([q, env])
        if q.shape[0] != cfg.proprio_dim:
            return f"proprio has {q.shape[0]} dims, the policy expects {cfg.proprio_dim}"
        return stamp, q, imgs

    # Worker -------------------------------------------------------------------------------
    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def latency_estimate(self) -> float:
        """q99 of the recent inference latencies plus q99 of the transport latencies (s)."""
        with self._lock:
            return self._timer.latency_s

    def _run(self) -> None:
        p = self.params
        last_stamp: float | None = None  # observation stamp of the newest chunk published
        # ... of the chunk the arbiter runs: the newest one it did not drop, and the one
        # before (it runs on when the newest is dropped).
        running: float | None = None
        before: float | None = None
        min_stamp = -math.inf  # observations of the running episode only
        last_why = ""
        while not self._stop.is_set():
            self._take_observations()
            now = self._now_s()
            with self._lock:
                start, self._episode_start = self._episode_start, None
                trigger = self._timer.trigger_row()
                refused, self._refused = self._refused, []
            if start is not None:  # a new episode: its first chunk now, from after the start
                last_stamp, running, before, min_stamp = None, None, None, start
            if running is not None and any(abs(r - running) < 1e-6 for r in refused):
                # The arbiter dropped it on arrival: the next chunk now, from a newer
                # observation; the one before it is what runs meanwhile.
                running, before = before, None
                self.replans += 1
                self.get_logger().info(
                    f"the arbiter dropped the newest chunk: the next one now ({self.replans} "
                    "so far)",
                    throttle_duration_sec=2.0,
                )
                if running is None:
                    running = -math.inf  # nothing to wait for
            if running is not None:
                wait = running + trigger * p.control_period_s - now
                if wait > 0:
                    self._stop.wait(min(wait, 0.05))
                    continue
            with self._lock:
                policy = self._policy
            try:
                obs = self._observation(policy)
            except ValueError as exc:
                obs = str(exc)
            if not isinstance(obs, str) and not self.prompt.strip():
                obs = "no prompt yet: waiting for an episode's start event"
            if isinstance(obs, str) or now - obs[0] > p.max_observation_age_s:
                why = obs if isinstance(obs, str) else f"observation {now - obs[0]:.3f} s old"
                # A new reason is logged as soon as the throttle allows (not lost to it).
                if why != last_why and self.get_logger().warning(
                    f"not serving: {why}", throttle_duration_sec=2.0
                ):
                    last_why = why
                self._stop.wait(0.005)
                continue
            stamp, proprio, images = obs
            if stamp < min_stamp or (last_stamp is not None and stamp <= last_stamp):
                self._stop.wait(0.002)  # no newer observation yet
                continue
            last_why = ""
            t0 = time.perf_counter()
            seed = None if p.seed < 0 else p.seed * 100_003 + self._seq
            try:
                chunk = policy.sample_actions(proprio, self.prompt, images=images, seed=seed)
            except Exception as exc:  # never kill the worker: log, hold, retry
                self.get_logger().error(
                    f"inference failed: {type(exc).__name__}: {exc}", throttle_duration_sec=1.0
                )
                self._stop.wait(0.1)
                continue
            with self._lock:
                self._timer.add_inference(time.perf_counter() - t0)
            if not np.all(np.isfinite(chunk)):
                self.get_logger().error("policy produced non-finite actions: chunk dropped")
                last_stamp = stamp
                continue
            self._publish(policy, stamp, chunk)
            if running is not None and math.isfinite(running):
                with self._lock:
                    late = self._timer.late(self._now_s(), running)
                    margin = self._timer.margin
                if late:
                    self.get_logger().warning(
                        f"chunk {self._seq - 1} late for the running chunk's last row: margin "
                        f"now {margin} rows",
                        throttle_duration_sec=2.0,
                    )
            last_stamp, before, running = stamp, running, stamp

    def _publish(self, policy: LoadedPolicy, stamp: float, chunk: np.ndarray) -> None:
        msg = ActionChunk()
        sec = math.floor(stamp)
        msg.header.stamp.sec = int(sec)
        msg.header.stamp.nanosec = min(round((stamp - sec) * 1e9), 999_999_999)
        msg.checkpoint_id = policy.checkpoint_id
        msg.learner_step = int(policy.learner_step)
        msg.chunk_seq = self._seq
        msg.horizon, msg.action_dim = int(chunk.shape[0]), int(chunk.shape[1])
        msg.control_period = float(self.params.control_period_s)
        msg.actions = np.ascontiguousarray(chunk, dtype=np.float32).reshape(-1).tolist()
        self._pub.publish(msg)
        self._seq += 1

    # Hot swap -----------------------------------------------------------------------------
    def _on_announce(
        self, req: AnnounceCheckpoint.Request, res: AnnounceCheckpoint.Response
    ) -> AnnounceCheckpoint.Response:
        with self._lock:
            old = self._policy
        if self.params.checkpoint.startswith(REMOTE_SCHEMES):
            res.accepted, res.active_checkpoint_id = False, old.checkpoint_id
            res.message = "remote backend: the remote server owns its weights; announce there"
            return res
        try:
            new = self._verify(req, old)
        except (CheckpointError, ValueError, OSError, RuntimeError) as exc:
            res.accepted = False
            res.active_checkpoint_id = old.checkpoint_id
            res.message = f"rejected {req.checkpoint_id or req.path}: {exc}"
            self.get_logger().warning(f"{res.message}; still serving {old.checkpoint_id}")
            return res
        with self._lock:
            self._policy = new
        res.accepted, res.active_checkpoint_id, res.message = True, new.checkpoint_id, ""
        self.get_logger().info(
            f"hot-swapped {old.checkpoint_id} -> {new.checkpoint_id} "
            f"(learner step {new.learner_step})"
        )
        return res

    def _verify(self, req: AnnounceCheckpoint.Request, old: LoadedPolicy) -> LoadedPolicy:
        if not req.path:
            raise ValueError("no path given")
        path, root = resolve_under_roots(req.path, self._roots)  # no traversal, no escape
        self.get_logger().info(f"verifying {path} (inside checkpoint root {root})")
        new = load_policy(path, self.params.device)  # manifest, every hash, tensor shapes
        if req.checkpoint_id and req.checkpoint_id != new.checkpoint_id:
            raise CheckpointError(
                f"announced id {req.checkpoint_id} but the manifest says {new.checkpoint_id}"
            )
        model_hash = new.manifest["files"].get(MODEL_FILE, "")
        if req.sha256 and req.sha256.lower() != model_hash:
            raise CheckpointError(
                f"announced sha256 {req.sha256[:12]}… but {MODEL_FILE} is {model_hash[:12]}…"
            )
        if req.learner_step and int(req.learner_step) != new.learner_step:
            raise CheckpointError(
                f"announced learner step {req.learner_step} but the manifest says "
                f"{new.learner_step}"
            )
        if why := check_compatible(new, old, self.params.execute_rows, self.params.backend):
            raise CheckpointError(why)
        obs = self._observation(new)
        if not isinstance(obs, str):  # a trial chunk on the live observation
            chunk = new.sample_actions(obs[1], self.prompt, images=obs[2], seed=0)
            if chunk.shape != (new.config.horizon, new.config.action_dim):
                raise CheckpointError(f"trial chunk has shape {chunk.shape}")
            if not np.all(np.isfinite(chunk)):
                raise CheckpointError("trial chunk holds non-finite actions")
        return new

    def shutdown(self) -> None:
        self._stop.set()
        self._worker.join(timeout=5.0)
        self._heartbeat.join(timeout=5.0)
        self._gc.uninstall()
        self._obs_node.destroy_node()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = PolicyServer()
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (CheckpointError, ValueError) as exc:
        print(f"{NODE_NAME}: {exc}", file=sys.stderr)
        return 2
    except Exception:
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
