"""The simulated bimanual robot: gym-aloha's ViperX scene, driven directly through dm_control.

Not the stock ``gym_aloha`` env: that one renders three 640×480 cameras on every step (~5
steps/s). Here the dm_control ``Environment`` is built from gym-aloha's task classes with an
observation that renders nothing; ``observe()`` renders only the configured cameras, at the
configured size, with multisampling, shadows and reflections off.

- Action: 14 dims, absolute joint angles (rad) + normalized gripper (0 closed … 1 open) per arm.
  gym-aloha declares ``Box(-1, 1)``, which is wrong; the limits here are the actuators' own.
- Object poses come from the seed (gym-aloha's own samplers) through ``sim.BOX_POSE``.
- Success: the task's staged reward reaches its maximum (4); the episode then ends.
- A dm_control ``PhysicsError`` (divergent simulation) ends the episode as a failure.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from arx_x5_driver.core.config import SimAlohaConfig
from arx_x5_driver.core.robot import (
    VIPERX_JOINTS,
    EpisodicBackend,
    FloatArray,
    Observation,
    RobotSpec,
    bimanual_action_names,
    check_action,
)

LOG = logging.getLogger(__name__)

CONTROL_HZ = 50.0
ARM_SLICES = (("left", 0, 7), ("right", 7, 14))
TASK_XML = {
    "transfer_cube": "bimanual_viperx_transfer_cube.xml",
    "insertion": "bimanual_viperx_insertion.xml",
}
TASK_PROMPTS = {
    "transfer_cube": "pick up the red cube with the right arm and hand it over to the left arm",
    "insertion": "pick up the red peg and the blue socket and insert the peg into the socket",
}


def task_xml_path(task: str) -> str:
    """Path of gym-aloha's joint-controlled scene for ``task``."""
    from gym_aloha.constants import ASSETS_DIR

    if task not in TASK_XML:
        raise ValueError(f"task must be one of {tuple(TASK_XML)}, got {task!r}")
    return str(ASSETS_DIR / TASK_XML[task])


def sample_object_poses(task: str, seed: int) -> FloatArray:
    """gym-aloha's object poses for ``seed``: cube ``[7]`` or peg + socket ``[14]``."""
    from gym_aloha.utils import sample_box_pose, sample_insertion_pose

    if task == "transfer_cube":
        return np.asarray(sample_box_pose(seed), dtype=np.float64)
    if task == "insertion":
        return np.concatenate(sample_insertion_pose(seed)).astype(np.float64)
    raise ValueError(f"task must be one of {tuple(TASK_XML)}, got {task!r}")


def _ensure_gl_backend() -> None:
    # EGL renders headless on these machines; respect an explicit choice.
    os.environ.setdefault("MUJOCO_GL", "egl")


class CameraRenderer:
    """Renders named cameras of a MuJoCo model with one reusable ``mujoco.Renderer``.

    ``fast=True`` turns multisampling, shadows and reflections off (several times faster on a
    software or small GPU; the images stay fine for learning).
    """

    def __init__(self, model: Any, height: int, width: int, fast: bool = True) -> None:
        _ensure_gl_backend()
        import mujoco

        self._mujoco = mujoco
        if fast:
            model.vis.quality.offsamples = 0
        # The offscreen buffer must hold the requested size.
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), width)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), height)
        self.height, self.width = height, width
        self._renderer = mujoco.Renderer(model, height=height, width=width)
        if fast:
            flags = self._renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._model = model

    def render(self, data: Any, camera: str) -> npt.NDArray[np.uint8]:
        cam_id = self._mujoco.mj_name2id(self._model, self._mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam_id < 0:
            raise ValueError(f"the model has no camera {camera!r}")
        self._renderer.update_scene(data, camera=cam_id)
        return np.ascontiguousarray(self._renderer.render())

    def close(self) -> None:
        self._renderer.close()


def _lean_task(base: type) -> type:
    """A subclass of gym-aloha task ``base`` whose observation renders nothing."""

    class LeanTask(base):  # type: ignore[misc, valid-type]
        def get_observation(self, physics: Any) -> collections.OrderedDict[str, Any]:
            obs: collections.OrderedDict[str, Any] = collections.OrderedDict()
            obs["qpos"] = self.get_qpos(physics)
            obs["qvel"] = self.get_qvel(physics)
            obs["env_state"] = self.get_env_state(physics)
            return obs

    LeanTask.__name__ = f"Lean{base.__name__}"
    return LeanTask


class SimAlohaBackend(EpisodicBackend):
    """gym-aloha's bimanual ViperX scene as an :class:`ArmBackend` (see module docstring)."""

    name: ClassVar[str] = "sim"

    def __init__(self, config: SimAlohaConfig | None = None) -> None:
        self.config = config or SimAlohaConfig()
        self._env: Any = None
        self._physics: Any = None
        self._renderer: CameraRenderer | None = None
        self._spec: RobotSpec | None = None
        self._rng = np.random.default_rng()
        self._fk: Any = None  # (model, scratch MjData, per-arm addresses), built on first use
        self._reset_status(started=False)

    # ArmBackend ---------------------------------------------------------------------------
    @property
    def spec(self) -> RobotSpec:
        if self._spec is None:
            self._spec = self._build_spec()
        return self._spec

    @property
    def is_connected(self) -> bool:
        return self._env is not None

    @property
    def physics(self) -> Any:
        """The dm_control ``Physics`` (for tests, the expert's IK model and benchmarks)."""
        self._require_connected()
        return self._physics

    def connect(self) -> None:
        if self._env is not None:
            return
        from dm_control import mujoco as dm_mujoco
        from dm_control.rl import control
        from gym_aloha.constants import DT
        from gym_aloha.tasks.sim import InsertionTask, TransferCubeTask

        base = TransferCubeTask if self.config.task == "transfer_cube" else InsertionTask
        physics = dm_mujoco.Physics.from_xml_path(task_xml_path(self.config.task))
        env = control.Environment(
            physics,
            _lean_task(base)(),
            time_limit=float("inf"),
            control_timestep=DT,
            n_sub_steps=None,
            flat_observation=False,
        )
        self._physics, self._env = physics, env
        self._spec = self._build_spec()
        if self.config.cameras:
            h, w = self.config.image_size
            self._renderer = CameraRenderer(physics.model.ptr, h, w, fast=self.config.fast_render)

    def disconnect(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env = None
        self._physics = None
        self._fk = None
        self._reset_status(started=False)

    def reset(self, seed: int | None = None) -> Observation:
        """New episode; object poses from ``seed`` (random when ``None``)."""
        self._require_connected()
        from gym_aloha.tasks import sim

        if seed is None:
            seed = int(self._rng.integers(0, 2**31 - 1))
        self.seed = int(seed)
        sim.BOX_POSE[0] = sample_object_poses(self.config.task, self.seed)
        self._env.task.random.seed(self.seed)
        self._env.reset()
        self._reset_status(started=True)
        return self.observe()

    def observe(self) -> Observation:
        self._require_connected()
        physics, task = self._physics, self._env.task
        images = {}
        if self._renderer is not None:
            for cam in self.config.cameras:
                images[cam] = self._renderer.render(physics.data.ptr, cam)
        return Observation(
            joint_positions=np.asarray(task.get_qpos(physics), dtype=np.float64),
            joint_velocities=np.asarray(task.get_qvel(physics), dtype=np.float64),
            images=images,
            env_state=np.asarray(task.get_env_state(physics), dtype=np.float64),
            timestamp=float(physics.data.time),
            step=self._step,
        )

    def command(self, action: npt.ArrayLike) -> None:
        self._require_connected()
        self._check_can_step()
        a = check_action(action, self.spec, self.config.out_of_limits, LOG)
        from dm_control.rl.control import PhysicsError

        try:
            timestep = self._env.step(a)
        except PhysicsError as exc:
            LOG.warning("physics diverged at step %d: %s", self._step, exc)
            self._record_failure("physics_error")
            return
        reward = float(timestep.reward or 0.0)
        self._record_step(
            reward,
            success=reward >= self._env.task.max_reward,
            time_up=self._step + 1 >= self.config.max_steps,
        )

    def observe_state(self) -> Observation:
        """Joint and object state, no camera rendered (the control path's fast read)."""
        self._require_connected()
        physics, task = self._physics, self._env.task
        return Observation(
            joint_positions=np.asarray(task.get_qpos(physics), dtype=np.float64),
            joint_velocities=np.asarray(task.get_qvel(physics), dtype=np.float64),
            env_state=np.asarray(task.get_env_state(physics), dtype=np.float64),
            timestamp=float(physics.data.time),
            step=self._step,
        )

    def end_effector_positions(self, action: npt.ArrayLike) -> dict[str, FloatArray]:
        """World position (m) of each arm's fingertip site (``cali_<arm>_site1``) at the joint
        angles of ``action``, from a scratch ``MjData`` (the simulation is not touched)."""
        self._require_connected()
        import mujoco

        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (14,):
            raise ValueError(f"action must have shape (14,), got {a.shape}")
        if self._fk is None:
            model = self._physics.model.ptr
            adr = {}
            for arm in ("left", "right"):
                ids = [
                    mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, f"vx300s_{arm}/{j}")
                    for j in VIPERX_JOINTS
                ]
                site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, f"cali_{arm}_site1")
                adr[arm] = (np.array([model.jnt_qposadr[j] for j in ids]), site)
            self._fk = (model, mujoco.MjData(model), adr)
        model, data, adr = self._fk
        out = {}
        for arm, lo in (("left", 0), ("right", 7)):
            qadr, site = adr[arm]
            data.qpos[qadr] = a[lo : lo + 6]
        mujoco.mj_kinematics(model, data)
        for arm in ("left", "right"):
            out[arm] = data.site_xpos[adr[arm][1]].copy()
        return out

    # Extras -------------------------------------------------------------------------------
    def render(self, camera: str, height: int, width: int) -> npt.NDArray[np.uint8]:
        """Render one camera at an ad-hoc size (not cached; for debugging and videos)."""
        self._require_connected()
        renderer = CameraRenderer(self._physics.model.ptr, height, width, self.config.fast_render)
        try:
            return renderer.render(self._physics.data.ptr, camera)
        finally:
            renderer.close()

    @property
    def prompt(self) -> str:
        return TASK_PROMPTS[self.config.task]

    # Internals ----------------------------------------------------------------------------
    def _build_spec(self) -> RobotSpec:
        names = bimanual_action_names()
        if self._physics is not None:
            model = self._physics.model
            arm_ranges = [tuple(model.actuator_ctrlrange[i]) for i in range(16)]
            # Actuators: 6 arm joints + 2 fingers per arm.
            joint_ranges = arm_ranges[0:6] + arm_ranges[8:14]
        else:  # the scene's ranges (same numbers, before connect)
            one_arm = [
                (-3.14158, 3.14158),
                (-1.85005, 1.25664),
                (-1.76278, 1.6057),
                (-3.14158, 3.14158),
                (-1.8675, 2.23402),
                (-3.14158, 3.14158),
            ]
            joint_ranges = one_arm + one_arm
        low: list[float] = []
        high: list[float] = []
        for arm in range(2):
            for lo, hi in joint_ranges[6 * arm : 6 * arm + 6]:
                low.append(float(lo))
                high.append(float(hi))
            low.append(0.0)
            high.append(1.0)
        return RobotSpec(
            action_names=names,
            arm_slices=ARM_SLICES,
            action_low=tuple(low),
            action_high=tuple(high),
            joint_names=names,
            cameras=self.config.cameras,
            control_hz=CONTROL_HZ,
        )
