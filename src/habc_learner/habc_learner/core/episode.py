"""An episode as numpy arrays, plus deterministic synthetic episode generators for tests.

Authority codes match ``habc_msgs/msg/ExecutedCommand`` ``CONTROLLER_*``: NONE = 0 (the arm
holds), POLICY = 1, HUMAN = 2, HANDBACK = 3 (the ramp from the operator's last action back to the
policy's after a takeover: nobody's decision, never a label or an imitation target).
Authority is logged per step and per arm ([T, n_arms]) because the arbiter allows one-arm
takeovers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

NONE = 0
POLICY = 1
HUMAN = 2
HANDBACK = 3
AUTHORITY_CODES = (NONE, POLICY, HUMAN, HANDBACK)
AUTHORITY_NAMES = {NONE: "none", POLICY: "policy", HUMAN: "human", HANDBACK: "handback"}

#: Loads the images of one camera at the given step indices: ``steps [N] -> uint8 [N, h, w, 3]``.
ImageLoader = Callable[[np.ndarray], np.ndarray]


class Outcome(str, enum.Enum):
    """Episode outcome z_e. Only SUCCESS / FAILURE are ever used as outcome labels."""

    SUCCESS = "success"
    FAILURE = "failure"
    ABORTED = "aborted"
    UNKNOWN = "unknown"

    @property
    def is_labeled(self) -> bool:
        return self in (Outcome.SUCCESS, Outcome.FAILURE)

    @classmethod
    def parse(cls, value: str | Outcome) -> Outcome:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"outcome {value!r} is not one of {[o.value for o in cls]}") from None


def array_image_loader(images: np.ndarray) -> ImageLoader:
    """Wrap an in-memory uint8 array [T, h, w, 3] as an :data:`ImageLoader`."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [T, h, w, 3], got {images.dtype} {images.shape}")

    def load(steps: np.ndarray) -> np.ndarray:
        return images[np.asarray(steps, dtype=np.int64)]

    return load


def arm_of_dim(arm_slices: Sequence[tuple[int, int]], action_dim: int) -> np.ndarray:
    """Map every action dimension to its arm index, [d] int64."""
    out = np.full(action_dim, -1, dtype=np.int64)
    for arm, (lo, hi) in enumerate(arm_slices):
        out[lo:hi] = arm
    return out


def _validate_arm_slices(arm_slices: tuple[tuple[int, int], ...], action_dim: int) -> None:
    if not arm_slices:
        raise ValueError("arm_slices must name at least one arm, e.g. ((0, 7), (7, 14))")
    expected_lo = 0
    for lo, hi in arm_slices:
        if lo != expected_lo or hi <= lo:
            raise ValueError(
                f"arm_slices={arm_slices} must be contiguous, non-empty and start at 0 "
                f"(bad slice ({lo}, {hi}))"
            )
        expected_lo = hi
    if expected_lo != action_dim:
        raise ValueError(
            f"arm_slices={arm_slices} cover {expected_lo} dims, actions have {action_dim}"
        )


@dataclass(frozen=True, eq=False)
class Episode:
    """One recorded episode, control steps t = 0 … T-1.

    Attributes:
        episode_id: unique id.
        task_id: task name (e.g. ``"assembly-v3"``).
        prompt: language prompt l.
        timestamps: [T] float64 seconds (control clock), non-decreasing.
        proprio: q_t, [T, p] float32.
        actions: executed a_t, [T, d] float32.
        authority: controller per step and arm, [T, n_arms] uint8 in {NONE, POLICY, HUMAN,
            HANDBACK}.
        checkpoint_ids: id k_t of the policy checkpoint loaded at each step, [T] str ("" none).
        learner_steps: learner step of that checkpoint, [T] int64 (-1 where unknown / none).
        outcome: z_e.
        success_step: T_s for a success (defaults to T-1 for a success without one); None
            otherwise.
        arm_slices: per arm, the [lo, hi) slice of action dims, e.g. ((0, 7), (7, 14)).
        images: camera name -> lazy :data:`ImageLoader` (never loaded eagerly).
        is_demonstration: an SFT demonstration (every window is demo data).
        robot_id: the robot that recorded it (fleet ingest: its folder name; "" otherwise).
    """

    episode_id: str
    task_id: str
    prompt: str
    timestamps: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    authority: np.ndarray
    checkpoint_ids: np.ndarray
    learner_steps: np.ndarray
    outcome: Outcome
    arm_slices: tuple[tuple[int, int], ...]
    success_step: int | None = None
    images: Mapping[str, ImageLoader] = field(default_factory=dict)
    is_demonstration: bool = False
    robot_id: str = ""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "outcome", Outcome.parse(self.outcome))
        timestamps = np.asarray(self.timestamps, dtype=np.float64)
        proprio = np.asarray(self.proprio, dtype=np.float32)
        actions = np.asarray(self.actions, dtype=np.float32)
        authority = np.asarray(self.authority)
        if timestamps.ndim != 1 or timestamps.shape[0] < 1:
            raise ValueError(f"timestamps must be [T] with T >= 1, got shape {timestamps.shape}")
        length = timestamps.shape[0]
        if np.any(np.diff(timestamps) < 0):
            raise ValueError("timestamps must be non-decreasing")
        if proprio.ndim != 2 or proprio.shape[0] != length:
            raise ValueError(f"proprio must be [T={length}, p], got shape {proprio.shape}")
        if actions.ndim != 2 or actions.shape[0] != length:
            raise ValueError(f"actions must be [T={length}, d], got shape {actions.shape}")
        if not (np.all(np.isfinite(proprio)) and np.all(np.isfinite(actions))):
            raise ValueError("proprio and actions must be finite")
        arm_slices = tuple((int(lo), int(hi)) for lo, hi in self.arm_slices)
        _validate_arm_slices(arm_slices, actions.shape[1])
        if authority.ndim == 1:
            authority = authority[:, None]
        if authority.shape != (length, len(arm_slices)):
            raise ValueError(
                f"authority must be [T={length}, n_arms={len(arm_slices)}], got shape "
                f"{authority.shape}"
            )
        if not np.isin(authority, AUTHORITY_CODES).all():
            bad = np.unique(authority[~np.isin(authority, AUTHORITY_CODES)]).tolist()
            raise ValueError(
                f"authority values {bad} are not in {AUTHORITY_CODES} (NONE/POLICY/HUMAN/HANDBACK)"
            )
        checkpoint_ids = np.asarray(self.checkpoint_ids, dtype=object)
        if checkpoint_ids.shape != (length,):
            raise ValueError(
                f"checkpoint_ids must be [T={length}], got shape {checkpoint_ids.shape}"
            )
        learner_steps = np.asarray(self.learner_steps, dtype=np.int64)
        if learner_steps.shape != (length,):
            raise ValueError(f"learner_steps must be [T={length}], got shape {learner_steps.shape}")
        success_step = self.success_step
        if self.outcome is Outcome.SUCCESS:
            if success_step is None:
                success_step = length - 1
            if not 0 <= int(success_step) < length:
                raise ValueError(f"success_step={success_step} is outside [0, {length})")
            success_step = int(success_step)
        elif success_step is not None:
            raise ValueError(
                f"success_step={success_step} given for outcome {self.outcome.value!r}"
            )
        for cam, loader in dict(self.images).items():
            if not callable(loader):
                raise ValueError(f"images[{cam!r}] must be a callable loader, got {type(loader)}")
        set_(self, "timestamps", timestamps)
        set_(self, "proprio", proprio)
        set_(self, "actions", actions)
        set_(self, "authority", authority.astype(np.uint8))
        set_(self, "checkpoint_ids", checkpoint_ids)
        set_(self, "learner_steps", learner_steps)
        set_(self, "arm_slices", arm_slices)
        set_(self, "success_step", success_step)
        set_(self, "images", dict(self.images))

    @property
    def length(self) -> int:
        """T."""
        return int(self.timestamps.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def proprio_dim(self) -> int:
        return int(self.proprio.shape[1])

    @property
    def n_arms(self) -> int:
        return len(self.arm_slices)

    @property
    def human_steps(self) -> np.ndarray:
        """[T] bool: at least one arm under HUMAN control."""
        return (self.authority == HUMAN).any(axis=1)

    def producer_learner_step(self) -> int:
        """Learner step of the newest checkpoint that drove this episode (-1 if none)."""
        valid = self.learner_steps[self.learner_steps >= 0]
        return int(valid.max()) if valid.size else -1

    def load_images(self, camera: str, steps: np.ndarray) -> np.ndarray:
        """uint8 [N, h, w, 3] images of ``camera`` at ``steps`` (through the lazy loader)."""
        if camera not in self.images:
            raise ValueError(
                f"episode {self.episode_id!r} has no camera {camera!r}; has {sorted(self.images)}"
            )
        return np.asarray(self.images[camera](np.asarray(steps, dtype=np.int64)))


# ---------------------------------------------------------------------------------------------
# Synthetic episodes (deterministic from a seed) for tests and benchmarks.
# ---------------------------------------------------------------------------------------------

SCENARIOS = (
    "demo",
    "autonomous_success",
    "autonomous_failure",
    "takeover_success",
    "takeover_failure",
    "two_takeovers",
    "takeover_to_end",
    "one_arm_takeover",
)

#: A segment spec: (controller, length) with controller "policy" / "human" / "handback" /
#: "none", or a
#: per-arm tuple of controllers for a one-arm takeover, e.g. (("human", "policy"), 20).
SegmentSpec = tuple[str | tuple[str, ...], int]
_CONTROLLER_CODES = {"none": NONE, "policy": POLICY, "human": HUMAN, "handback": HANDBACK}


def authority_from_segments(segments: Sequence[SegmentSpec], n_arms: int) -> np.ndarray:
    """Build an authority array [T, n_arms] from segment specs (see :data:`SegmentSpec`)."""
    rows: list[np.ndarray] = []
    for controller, length in segments:
        if length < 0:
            raise ValueError(f"segment length must be >= 0, got {length}")
        names = (controller,) * n_arms if isinstance(controller, str) else tuple(controller)
        if len(names) != n_arms:
            raise ValueError(f"segment controller {controller!r} does not name {n_arms} arms")
        try:
            codes = [_CONTROLLER_CODES[n] for n in names]
        except KeyError as exc:
            raise ValueError(
                f"controller {exc.args[0]!r} is not one of {sorted(_CONTROLLER_CODES)}"
            ) from None
        rows.append(np.tile(np.asarray(codes, dtype=np.uint8), (length, 1)))
    if not rows:
        raise ValueError("segments must not be empty")
    return np.concatenate(rows, axis=0)


def synthetic_episode(
    segments: Sequence[SegmentSpec],
    outcome: Outcome | str,
    *,
    seed: int = 0,
    arm_slices: Sequence[tuple[int, int]] = ((0, 7), (7, 14)),
    proprio_dim: int | None = None,
    success_step: int | None = None,
    learner_step: int = 0,
    episode_id: str | None = None,
    task_id: str = "synthetic",
    prompt: str = "reach the goal",
    cameras: Sequence[str] = (),
    image_size: tuple[int, int] = (96, 96),
    is_demonstration: bool = False,
    control_period: float = 0.02,
) -> Episode:
    """A deterministic synthetic episode with the given controller segments.

    Dynamics: the state moves toward a seed-dependent goal, q_{t+1} = q_t + a_t, with the policy
    acting a little noisier than the human. The proprio includes a normalized time feature in its
    last dimension (so critics can resolve steps-to-go). Images, if asked for, are rendered
    lazily from the state (never stored).
    """
    rng = np.random.default_rng(seed)
    arm_slices = tuple(arm_slices)
    action_dim = arm_slices[-1][1]
    proprio_dim = action_dim + 1 if proprio_dim is None else proprio_dim
    if proprio_dim < 2:
        raise ValueError(f"proprio_dim must be >= 2, got {proprio_dim}")
    authority = authority_from_segments(segments, len(arm_slices))
    length = authority.shape[0]
    goal = rng.uniform(-1.0, 1.0, size=action_dim).astype(np.float32)
    state = np.zeros(action_dim, dtype=np.float32)
    actions = np.zeros((length, action_dim), dtype=np.float32)
    states = np.zeros((length, action_dim), dtype=np.float32)
    dim_arm = arm_of_dim(arm_slices, action_dim)
    for t in range(length):
        states[t] = state
        direction = (goal - state) / max(1.0, float(length - t))
        noise_scale = np.where(authority[t, dim_arm] == HUMAN, 0.002, 0.01)
        action = direction + noise_scale * rng.standard_normal(action_dim).astype(np.float32)
        action = np.where(authority[t, dim_arm] == NONE, 0.0, action).astype(np.float32)
        actions[t] = action
        state = state + action
    proprio = np.zeros((length, proprio_dim), dtype=np.float32)
    proprio[:, : min(action_dim, proprio_dim - 1)] = states[:, : proprio_dim - 1]
    proprio[:, -1] = np.arange(length, dtype=np.float32) / max(1, length - 1)
    policy_any = (authority == POLICY).any(axis=1)
    learner_steps = np.where(policy_any, learner_step, -1).astype(np.int64)
    checkpoint_ids = np.array(
        [f"ckpt-{learner_step}" if p else "" for p in policy_any], dtype=object
    )
    images: dict[str, ImageLoader] = {}
    for cam_index, cam in enumerate(cameras):
        images[cam] = _rendered_loader(proprio, image_size, cam_index)
    eid = episode_id if episode_id is not None else f"synthetic-{seed}"
    return Episode(
        episode_id=eid,
        task_id=task_id,
        prompt=prompt,
        timestamps=np.arange(length, dtype=np.float64) * control_period,
        proprio=proprio,
        actions=actions,
        authority=authority,
        checkpoint_ids=checkpoint_ids,
        learner_steps=learner_steps,
        outcome=Outcome.parse(outcome),
        arm_slices=arm_slices,
        success_step=success_step,
        images=images,
        is_demonstration=is_demonstration,
    )


def _rendered_loader(
    proprio: np.ndarray, image_size: tuple[int, int], cam_index: int
) -> ImageLoader:
    """Lazily render a cheap uint8 image per step: a horizontal gradient shifted by the state."""
    h, w = image_size
    xs = np.linspace(0.0, 1.0, w, dtype=np.float32)

    def load(steps: np.ndarray) -> np.ndarray:
        q = proprio[np.asarray(steps, dtype=np.int64)]
        shift = np.tanh(q[:, :3].sum(axis=1, keepdims=True)) + 0.1 * cam_index
        row = (np.clip(xs[None, :] + shift, 0.0, 1.0) * 255).astype(np.uint8)  # [N, w]
        img = np.broadcast_to(row[:, None, :, None], (q.shape[0], h, w, 3))
        return np.ascontiguousarray(img)

    return load


def scenario_episode(
    scenario: str,
    *,
    seed: int = 0,
    length: int = 120,
    arm_slices: Sequence[tuple[int, int]] = ((0, 7), (7, 14)),
    learner_step: int = 0,
    cameras: Sequence[str] = (),
    image_size: tuple[int, int] = (96, 96),
    episode_id: str | None = None,
) -> Episode:
    """A named synthetic scenario (see :data:`SCENARIOS`) of ``length`` steps.

    Takeovers are placed at fixed fractions of ``length``; outcome and demonstration flag follow
    the scenario name.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario {scenario!r} is not one of {SCENARIOS}")
    if length < 40:
        raise ValueError(f"length must be >= 40 for the takeover scenarios, got {length}")
    a, b = int(length * 0.3), int(length * 0.25)
    n_arms = len(tuple(arm_slices))
    one_arm: tuple[str, ...] = ("human",) + ("policy",) * (n_arms - 1)
    table: dict[str, tuple[list[SegmentSpec], Outcome]] = {
        "demo": ([("human", length)], Outcome.SUCCESS),
        "autonomous_success": ([("policy", length)], Outcome.SUCCESS),
        "autonomous_failure": ([("policy", length)], Outcome.FAILURE),
        "takeover_success": (
            [("policy", a), ("human", b), ("policy", length - a - b)],
            Outcome.SUCCESS,
        ),
        "takeover_failure": (
            [("policy", a), ("human", b), ("policy", length - a - b)],
            Outcome.FAILURE,
        ),
        "two_takeovers": (
            [
                ("policy", a // 2),
                ("human", b // 2),
                ("policy", a // 2),
                ("human", b // 2),
                ("policy", length - 2 * (a // 2) - 2 * (b // 2)),
            ],
            Outcome.SUCCESS,
        ),
        "takeover_to_end": ([("policy", a), ("human", length - a)], Outcome.SUCCESS),
        "one_arm_takeover": (
            [("policy", a), (one_arm, b), ("policy", length - a - b)],
            Outcome.SUCCESS,
        ),
    }
    segments, outcome = table[scenario]
    return synthetic_episode(
        segments,
        outcome,
        seed=seed,
        arm_slices=arm_slices,
        learner_step=learner_step,
        episode_id=episode_id if episode_id is not None else f"{scenario}-{seed}",
        cameras=cameras,
        image_size=image_size,
        is_demonstration=scenario == "demo",
    )
