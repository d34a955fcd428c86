"""Episode bags (see :mod:`bag_format`) → :class:`Episode` arrays, skipping bad bags.

Control step ``t`` is the ``t``-th ``ExecutedCommand`` (by ``step_index``); a step the arbiter
(chunk-level safety step) or the driver clamped, or the driver refused, has authority NONE
(never labelled, never imitated). Its observation is
the newest joint state (and privileged env state, in simulation) received at or before that
command, by the bag's receive timestamps (camera frames too: the newest frame at or before the
command). Camera images are not decoded while reading: with an
:class:`~habc_learner.core.image_cache.ImageCache` every frame is decoded once into memory maps
(the learner's path); without one each camera gets a lazy loader that opens the bag again and
decodes only the frames asked for.

A bag that is incomplete (its recorder died), truncated, corrupt, aborted or inconsistent is
skipped with a one-line reason and never raises: :func:`read_episodes` returns what it used and
a :class:`BagReport` of what it skipped and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import Reader

from habc_common import bag_format as bf
from habc_learner.core.episode import NONE, POLICY, Episode, Outcome
from habc_learner.core.image_cache import ImageCache


class BagSkipped(Exception):
    """A bag that cannot be learned from; the message is the one-line reason."""

    def __init__(self, reason: str) -> None:
        one_line = " ".join(str(reason).split())
        super().__init__(one_line if len(one_line) <= 300 else one_line[:297] + "...")


@dataclass(frozen=True)
class UsedBag:
    path: Path
    episode_id: str
    steps: int
    outcome: str
    source: str


@dataclass
class BagReport:
    """What a folder scan used and what it skipped (with reasons)."""

    used: list[UsedBag] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def format(self) -> str:
        """Human-readable summary: one line per bag."""
        lines = [f"{len(self.used)} episode bag(s) used, {len(self.skipped)} skipped"]
        for u in self.used:
            lines.append(f"  used    {u.path.name}: {u.source}, {u.outcome}, {u.steps} steps")
        for path, reason in self.skipped:
            lines.append(f"  skipped {path.name}: {reason}")
        return "\n".join(lines)


def _camera_loader(path: Path, topic: str, frame_of_step: np.ndarray):
    """Lazy loader: decode the frames of ``topic`` used by the requested steps only."""

    def load(steps: np.ndarray) -> np.ndarray:
        steps = np.asarray(steps, dtype=np.int64)
        wanted = frame_of_step[steps]
        needed = set(int(i) for i in np.unique(wanted))
        frames: dict[int, np.ndarray] = {}
        store = bf.typestore()
        with Reader(path) as reader:
            conns = [c for c in reader.connections if c.topic == topic]
            for index, (conn, _t, raw) in enumerate(reader.messages(connections=conns)):
                if index in needed:
                    msg = store.deserialize_cdr(raw, conn.msgtype)
                    frames[index] = _image_to_rgb(msg, conn.msgtype)
                    if len(frames) == len(needed):
                        break
        return np.stack([frames[int(i)] for i in wanted])

    return load


def _image_to_rgb(msg: object, msgtype: str) -> np.ndarray:
    if msgtype == bf.MSGTYPE_COMPRESSED_IMAGE:
        import cv2

        bgr = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError("undecodable compressed image")
        return bgr[:, :, ::-1].copy()
    data = np.frombuffer(msg.data, np.uint8)
    if msg.encoding == "rgb8":
        return data.reshape(msg.height, msg.width, 3).copy()
    if msg.encoding == "bgr8":
        return data.reshape(msg.height, msg.width, 3)[:, :, ::-1].copy()
    raise ValueError(f"unsupported image encoding {msg.encoding!r} (rgb8, bgr8, compressed)")


#: A message received at most this long after a step still counts as that step's observation
#: when nothing older exists (streams start a few milliseconds apart).
LATE_START_TOLERANCE_NS = 100_000_000


def _newest_at_or_before(
    times: np.ndarray, query: np.ndarray, still_until: int | None = None
) -> np.ndarray:
    """Index of the newest ``times`` entry ≤ each ``query`` time.

    Steps before the first message get the first message when it came at most
    :data:`LATE_START_TOLERANCE_NS` later, or when it came no later than ``still_until`` (the
    first command the driver executed: until then the arm stood still at its reset pose, so
    the first message shows it as it was), else -1.
    """
    idx = np.searchsorted(times, query, side="right") - 1
    if times.size:
        late = (idx < 0) & (times[0] - query <= LATE_START_TOLERANCE_NS)
        if still_until is not None:
            late |= (idx < 0) & (times[0] <= still_until)
        idx = np.where(late, 0, idx)
    return idx


def read_episode(
    path: str | Path,
    *,
    use_env_state: bool = True,
    cameras: Sequence[str] | None = None,
    image_cache: ImageCache | None = None,
    image_size: tuple[int, int] | None = None,
) -> Episode:
    """Read one episode bag. Raises :class:`BagSkipped` with a one-line reason.

    Args:
        use_env_state: append the privileged ``/habc/env_state`` (simulation only) to the
            proprioception, when the bag has it.
        cameras: cameras to attach image loaders for (``None``: every camera in the bag).
        image_cache: decode every frame of those cameras once, at ``image_size``, into this
            cache (or find them there); the loaders then read memory maps and never open the
            bag again. ``None``: lazy loaders that reopen the bag for every call, at the
            recorded size.
        image_size: (height, width) of the cached frames; required with ``image_cache``.
    """
    if image_cache is not None and image_size is None:
        raise ValueError("image_cache needs image_size (the policy's (height, width))")
    path = Path(path)
    try:
        custom = bf.read_custom_data(path)
    except FileNotFoundError:
        raise BagSkipped("no metadata.yaml: the recorder never closed the bag") from None
    except (ValueError, OSError) as exc:
        raise BagSkipped(f"unreadable metadata: {exc}") from None
    if custom.get(bf.KEY_COMPLETE) != "true":
        raise BagSkipped("incomplete: the episode was never closed (recorder stopped mid-episode)")
    try:
        outcome = Outcome.parse(custom.get(bf.KEY_OUTCOME, "unknown"))
    except ValueError as exc:
        raise BagSkipped(str(exc)) from None
    if outcome is Outcome.ABORTED:
        raise BagSkipped(
            f"aborted episode ({custom.get(bf.KEY_MARKED_BY, '')}): never learned from"
        )
    try:
        arm_slices = tuple((lo, hi) for _name, lo, hi in bf.decode_arms(custom[bf.KEY_ARMS]))
    except (KeyError, ValueError) as exc:
        raise BagSkipped(f"bad or missing {bf.KEY_ARMS}: {exc}") from None

    store = bf.typestore()
    commands: list[tuple[int, object]] = []
    applied: list[object] = []
    applied_t: list[int] = []
    joints: list[tuple[int, np.ndarray]] = []
    env: list[tuple[int, np.ndarray]] = []
    camera_times: dict[str, list[int]] = {}
    camera_topics: dict[str, str] = {}
    try:
        with Reader(path) as reader:
            for conn in reader.connections:
                parts = conn.topic.split("/")
                if len(parts) >= 4 and parts[1] == "cameras" and parts[3] == "image_raw":
                    camera_topics.setdefault(parts[2], conn.topic)
            wanted = {
                bf.TOPIC_EXECUTED_COMMAND,
                bf.TOPIC_APPLIED_COMMAND,
                bf.TOPIC_JOINT_STATES,
                bf.TOPIC_ENV_STATE,
            }
            wanted |= set(camera_topics.values())
            conns = [c for c in reader.connections if c.topic in wanted]
            for conn, t_ns, raw in reader.messages(connections=conns):
                if conn.topic in camera_topics.values():
                    camera_times.setdefault(conn.topic, []).append(t_ns)
                    continue
                msg = store.deserialize_cdr(raw, conn.msgtype)
                if conn.topic == bf.TOPIC_EXECUTED_COMMAND:
                    commands.append((t_ns, msg))
                elif conn.topic == bf.TOPIC_APPLIED_COMMAND:
                    applied.append(msg)
                    applied_t.append(t_ns)
                elif conn.topic == bf.TOPIC_JOINT_STATES:
                    joints.append((t_ns, np.asarray(msg.position, dtype=np.float32)))
                else:
                    env.append((t_ns, np.asarray(msg.data, dtype=np.float32)))
    except BagSkipped:
        raise
    except Exception as exc:  # rosbags raises many kinds on truncated / corrupt files
        raise BagSkipped(f"corrupt or truncated bag: {type(exc).__name__}: {exc}") from None

    if not commands:
        raise BagSkipped("no executed commands: an empty episode")
    declared = custom.get(bf.KEY_NUM_STEPS, "")
    if declared and int(declared) != len(commands):
        raise BagSkipped(
            f"truncated: metadata says {declared} steps, the bag holds {len(commands)}"
        )
    commands.sort(key=lambda item: item[1].step_index)
    steps = np.array([msg.step_index for _t, msg in commands], dtype=np.int64)
    if not np.array_equal(steps, np.arange(len(commands))):
        raise BagSkipped(
            f"executed commands are not steps 0..{len(commands) - 1} (gaps or repeats)"
        )
    by_step = {int(m.step_index): m for m in applied}
    over = [step for step, m in by_step.items() if m.hold_reason == bf.HOLD_EPISODE_OVER]
    # The simulator's success ends the episode too (the driver's record of a later tick may
    # miss the bag when the recorder closes at the operator's mark).
    over += [step + 1 for step, m in by_step.items() if m.task_success]
    if over:
        # Commands the driver received after the episode had ended were never executed: they
        # are not steps of the episode (the arbiter keeps ticking until the outcome is marked).
        commands = commands[: min(over)]
        if not commands:
            raise BagSkipped("no executed commands: the episode was over before step 0")
    reported = [step for step in by_step if step < len(commands)]
    if reported:
        # The last steps the driver never reported are not known to have run (the recorder
        # closes at the operator's mark, which may come before the driver's record of the
        # tick that hit the simulator's time limit): they are not steps of the episode.
        commands = commands[: max(reported) + 1]
    cmd_t = np.array([t for t, _msg in commands], dtype=np.int64)
    if not joints:
        raise BagSkipped("no joint states")
    joint_t = np.array([t for t, _q in joints], dtype=np.int64)
    # Node-graph bags: until the driver executed its first command the arm stood still.
    moved_t = [t for t, m in zip(applied_t, applied) if not m.hold]
    still_until = min(moved_t) if moved_t else (int(np.iinfo(np.int64).max) if applied else None)
    j_idx = _newest_at_or_before(joint_t, cmd_t, still_until)
    if j_idx[0] < 0:
        raise BagSkipped(
            "no joint state at (or within 100 ms of) step 0, nor before the arm first moved"
        )
    q = np.stack([joints[i][1] for i in j_idx])
    if use_env_state and env:
        env_t = np.array([t for t, _s in env], dtype=np.int64)
        e_idx = _newest_at_or_before(env_t, cmd_t, still_until)
        if e_idx[0] < 0:
            raise BagSkipped("no env state at (or within 100 ms of) step 0")
        q = np.concatenate([q, np.stack([env[i][1] for i in e_idx])], axis=1)

    n_arms = len(arm_slices)
    controllers = [np.asarray(msg.controller, dtype=np.uint8) for _t, msg in commands]
    if any(c.shape != (n_arms,) for c in controllers):
        raise BagSkipped(f"executed commands must tag {n_arms} arms each")
    authority = np.stack(controllers)
    # A row the arbiter's chunk-level safety step clamped is not the policy's choice: nobody's.
    authority[[bool(msg.clamped) for _t, msg in commands]] = NONE
    actions = np.stack([np.asarray(msg.action, dtype=np.float32) for _t, msg in commands])
    task_success_step = None
    if by_step:
        authority, actions, task_success_step = _apply_driver_record(authority, actions, by_step)
    policy_step = (authority == POLICY).any(axis=1)
    learner_steps = np.array([msg.learner_step for _t, msg in commands], dtype=np.int64)
    learner_steps = np.where(policy_step, learner_steps, -1)
    checkpoint_ids = np.array(
        [msg.checkpoint_id if p else "" for (_t, msg), p in zip(commands, policy_step)],
        dtype=object,
    )
    stamps = np.array(
        [msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec for _t, msg in commands]
    )

    frame_of_step: dict[str, np.ndarray] = {}
    for cam, topic in camera_topics.items():
        if cameras is not None and cam not in cameras:
            continue
        times = np.asarray(camera_times.get(topic, []), dtype=np.int64)
        frame = _newest_at_or_before(times, cmd_t, still_until) if times.size else np.array([-1])
        if frame[0] < 0:
            raise BagSkipped(f"camera {cam!r} has no frame at (or within 100 ms of) step 0")
        frame_of_step[cam] = frame
    if cameras is not None and set(cameras) - set(frame_of_step):
        raise BagSkipped(f"missing camera(s) {sorted(set(cameras) - set(frame_of_step))}")
    images = {}
    if image_cache is not None and frame_of_step:
        assert image_size is not None
        try:
            entry = image_cache.get(
                path, {c: camera_topics[c] for c in frame_of_step}, tuple(image_size)
            )
        except Exception as exc:  # an undecodable frame makes the whole bag unusable
            raise BagSkipped(f"camera frames not decodable: {type(exc).__name__}: {exc}") from None
        for cam, frame in frame_of_step.items():
            images[cam] = entry.loader(cam, frame)
    else:
        for cam, frame in frame_of_step.items():
            images[cam] = _camera_loader(path, camera_topics[cam], frame)

    success_step = None
    if outcome is Outcome.SUCCESS and task_success_step is not None:
        success_step = task_success_step
    elif outcome is Outcome.SUCCESS and custom.get(bf.KEY_SUCCESS_STEP):
        success_step = int(custom[bf.KEY_SUCCESS_STEP])
    try:
        return Episode(
            episode_id=custom.get(bf.KEY_EPISODE_ID) or path.name,
            task_id=custom.get(bf.KEY_TASK, ""),
            prompt=custom.get(bf.KEY_PROMPT, ""),
            timestamps=stamps,
            proprio=q,
            actions=actions,
            authority=authority,
            checkpoint_ids=checkpoint_ids,
            learner_steps=learner_steps,
            outcome=outcome,
            arm_slices=arm_slices,
            success_step=success_step,
            images=images,
            is_demonstration=custom.get(bf.KEY_SOURCE) == "demo",
        )
    except ValueError as exc:
        raise BagSkipped(f"inconsistent episode: {exc}") from None


def _apply_driver_record(
    authority: np.ndarray, actions: np.ndarray, by_step: dict[int, Any]
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Actions and authority as the driver executed them (node-graph bags).

    Step ``t``'s action becomes the driver's applied target. A step the driver refused
    (``hold``), shortened (``clamped``) or never reported is nobody's decision: its authority
    becomes NONE for every arm, so it is neither a label anchor nor an imitation target.
    Returns ``(authority, actions, T_s)`` with ``T_s`` the first step whose command the
    simulator saw reach success (``None`` when no step says so, e.g. on a real robot).
    """
    authority, actions = authority.copy(), actions.copy()
    success_step = None
    for t in range(authority.shape[0]):
        m = by_step.get(t)
        if m is None or m.hold or m.clamped:
            authority[t] = NONE
        if m is not None and len(m.action) == actions.shape[1]:
            actions[t] = np.asarray(m.action, dtype=np.float32)
        if m is not None and m.task_success and success_step is None:
            success_step = t
    return authority, actions, success_step


def find_bags(folder: str | Path) -> list[Path]:
    """Episode bag directories directly under ``folder`` (sorted by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"bag folder {folder} does not exist")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and (any(p.glob("*.mcap")) or any(p.glob("*.db3")))
    )


def read_episodes(
    folder: str | Path,
    *,
    use_env_state: bool = True,
    cameras: Sequence[str] | None = None,
    image_cache: ImageCache | None = None,
    image_size: tuple[int, int] | None = None,
) -> tuple[list[Episode], BagReport]:
    """Read every episode bag under ``folder``; bad ones are skipped and reported."""
    report = BagReport()
    episodes: list[Episode] = []
    for path in find_bags(folder):
        try:
            ep = read_episode(
                path,
                use_env_state=use_env_state,
                cameras=cameras,
                image_cache=image_cache,
                image_size=image_size,
            )
        except BagSkipped as exc:
            report.skipped.append((path, str(exc)))
            continue
        episodes.append(ep)
        source = "demo" if ep.is_demonstration else "rollout"
        report.used.append(UsedBag(path, ep.episode_id, ep.length, ep.outcome.value, source))
    return episodes, report


def write_episode(
    path: str | Path,
    episode: Episode,
    *,
    joint_dim: int | None = None,
    arm_names: Sequence[str] | None = None,
    images: dict[str, np.ndarray] | None = None,
) -> None:
    """Write ``episode`` as an episode bag (the inverse of :func:`read_episode`).

    The first ``joint_dim`` proprio columns go to ``/joint_states`` and the rest, if any, to
    the privileged ``/habc/env_state``. ``images`` maps camera name to uint8 ``[T, h, w, 3]``.
    """
    joint_dim = episode.proprio_dim if joint_dim is None else joint_dim
    if not 0 < joint_dim <= episode.proprio_dim:
        raise ValueError(f"joint_dim must be in 1..{episode.proprio_dim}, got {joint_dim}")
    names = list(arm_names) if arm_names else [f"arm{i}" for i in range(episode.n_arms)]
    if len(names) != episode.n_arms:
        raise ValueError(f"{len(names)} arm names for {episode.n_arms} arms")
    meta = bf.EpisodeMeta(
        episode_id=episode.episode_id,
        task=episode.task_id,
        prompt=episode.prompt,
        source="demo" if episode.is_demonstration else "rollout",
        arms=tuple((n, lo, hi) for n, (lo, hi) in zip(names, episode.arm_slices)),
    )
    with bf.EpisodeBagWriter(path, meta) as w:
        joint_names = [f"joint{i}" for i in range(joint_dim)]
        for t in range(episode.length):
            t_ns = round(float(episode.timestamps[t]) * 1e9)
            w.write_joint_state(t_ns, joint_names, episode.proprio[t, :joint_dim])
            if joint_dim < episode.proprio_dim:
                w.write_env_state(t_ns, episode.proprio[t, joint_dim:])
            for cam, frames in (images or {}).items():
                w.write_image(t_ns, cam, frames[t])
            policy = bool((episode.authority[t] == POLICY).any())
            w.write_command(
                t_ns,
                step_index=t,
                controller=episode.authority[t],
                action=episode.actions[t],
                checkpoint_id=str(episode.checkpoint_ids[t]) if policy else "",
                learner_step=int(episode.learner_steps[t]) if policy else -1,
            )
        if episode.outcome in (Outcome.SUCCESS, Outcome.FAILURE, Outcome.UNKNOWN):
            success_step = episode.success_step if episode.outcome is Outcome.SUCCESS else None
            w.finish(episode.outcome.value, "writer", success_step=success_step)
        else:
            w.finish("aborted", "writer")
