"""Meta-World MT1 as an :class:`ArmBackend`: the external benchmark (single Sawyer arm).

- Action: 4 dims ``[dx, dy, dz, gripper]`` in ``[-1, 1]`` (end-effector deltas), one arm
  ``(("arm", 0, 4),)``. Nothing downstream may assume 14 dims.
- Observation: ``joint_positions`` = the arm's 7 joints + 2 finger joints (rad / m),
  ``env_state`` = Meta-World's 39-dim observation (hand, gripper, objects, goal), which is what
  the shipped expert policies read.
- Seeds: ``reset(seed)`` sets the ``seed % 50``-th task sampled by ``metaworld.MT1(task,
  seed=seed // 50)``; resets are deterministic per task.
- Success: ``info["success"]`` (binary); the episode ends there, or at ``max_steps``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from arx_x5_driver.core.config import MetaWorldConfig, did_you_mean, metaworld_task_names
from arx_x5_driver.core.robot import (
    EpisodicBackend,
    Observation,
    RobotSpec,
    check_action,
)
from arx_x5_driver.core.sim_aloha import CameraRenderer

LOG = logging.getLogger(__name__)

TASKS_PER_SEED = 50
ARM_JOINTS = ("right_j0", "right_j1", "right_j2", "right_j3", "right_j4", "right_j5", "right_j6")
FINGER_JOINTS = ("r_close", "l_close")


class MetaWorldBackend(EpisodicBackend):
    """One Meta-World MT1 task (see module docstring)."""

    name: ClassVar[str] = "metaworld"

    def __init__(self, config: MetaWorldConfig | None = None) -> None:
        self.config = config or MetaWorldConfig()
        self._env: Any = None
        self._benchmarks: dict[int, Any] = {}
        self._renderer: CameraRenderer | None = None
        self._qpos_adr: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._dof_adr: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._obs: npt.NDArray[np.float64] | None = None
        self._grip = -1.0  # the last gripper command (hold_position)
        self._spec = RobotSpec(
            action_names=("dx", "dy", "dz", "gripper"),
            arm_slices=(("arm", 0, 4),),
            action_low=(-1.0, -1.0, -1.0, -1.0),
            action_high=(1.0, 1.0, 1.0, 1.0),
            joint_names=ARM_JOINTS + FINGER_JOINTS,
            cameras=self.config.cameras,
            control_hz=80.0,  # frame_skip 5 × 2.5 ms
        )
        self._rng = np.random.default_rng()
        self._reset_status(started=False)

    @property
    def spec(self) -> RobotSpec:
        return self._spec

    @property
    def is_connected(self) -> bool:
        return self._env is not None

    @property
    def prompt(self) -> str:
        return self.config.task.removesuffix("-v3").replace("-", " ")

    def connect(self) -> None:
        if self._env is not None:
            return
        names = metaworld_task_names()
        if self.config.task not in names:
            raise ValueError(
                f"unknown Meta-World task {self.config.task!r}"
                + did_you_mean(self.config.task, names)
            )
        import mujoco

        bench = self._benchmark(0)
        env = bench.train_classes[self.config.task]()
        env.set_task(bench.train_tasks[0])
        model = env.model
        ids = [
            mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in self.spec.joint_names
        ]
        if min(ids) < 0:
            missing = [n for n, i in zip(self.spec.joint_names, ids) if i < 0]
            raise RuntimeError(f"Meta-World model lacks joints {missing}")
        self._qpos_adr = np.array([model.jnt_qposadr[i] for i in ids])
        self._dof_adr = np.array([model.jnt_dofadr[i] for i in ids])
        self._env = env
        if self.config.cameras:
            h, w = self.config.image_size
            self._renderer = CameraRenderer(model, h, w, fast=True)

    def disconnect(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if self._env is not None:
            self._env.close()
        self._env = None
        self._reset_status(started=False)

    def _benchmark(self, mt1_seed: int) -> Any:
        bench = self._benchmarks.get(mt1_seed)
        if bench is None:
            import metaworld

            bench = metaworld.MT1(self.config.task, seed=mt1_seed)
            if len(self._benchmarks) > 4:
                self._benchmarks.pop(next(iter(self._benchmarks)))
            self._benchmarks[mt1_seed] = bench
        return bench

    def reset(self, seed: int | None = None) -> Observation:
        self._require_connected()
        if seed is None:
            seed = int(self._rng.integers(0, 2**31 - 1))
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        bench = self._benchmark(self.seed // TASKS_PER_SEED)
        self._env.set_task(bench.train_tasks[self.seed % TASKS_PER_SEED])
        obs, _ = self._env.reset()
        self._obs = np.asarray(obs, dtype=np.float64)
        self._grip = -1.0  # Meta-World resets with the gripper open
        self._reset_status(started=True)
        return self.observe()

    def hold_position(self) -> npt.NDArray[np.float64]:
        """The command that moves nothing (``[4]``): zero end-effector deltas, and the
        gripper's last command (the command space is deltas, not joint positions)."""
        return np.array([0.0, 0.0, 0.0, self._grip], dtype=np.float64)

    def observe(self) -> Observation:
        self._require_connected()
        data = self._env.data
        images = {}
        if self._renderer is not None:
            for cam in self.config.cameras:
                images[cam] = self._renderer.render(data, cam)
        return Observation(
            joint_positions=np.asarray(data.qpos[self._qpos_adr], dtype=np.float64).copy(),
            joint_velocities=np.asarray(data.qvel[self._dof_adr], dtype=np.float64).copy(),
            images=images,
            env_state=None if self._obs is None else self._obs.copy(),
            timestamp=float(data.time),
            step=self._step,
        )

    def command(self, action: npt.ArrayLike) -> None:
        self._require_connected()
        self._check_can_step()
        a = check_action(action, self.spec, self.config.out_of_limits, LOG)
        self._grip = float(a[3])
        obs, reward, _, truncated, info = self._env.step(a.astype(np.float32))
        self._obs = np.asarray(obs, dtype=np.float64)
        self._record_step(
            float(reward),
            success=bool(info.get("success", False)),
            time_up=self._step + 1 >= self.config.max_steps or bool(truncated),
        )
