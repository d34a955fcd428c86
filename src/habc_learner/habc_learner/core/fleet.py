"""Fleet ingest: episode bags of many robots in one root, ``<root>/<robot_id>/<episode>/``.

Each robot's recorder writes into its own folder, possibly on a shared filesystem while the
learner reads. A bag is read only once it is **closed**: the rosbag2 writer writes
``metadata.yaml`` when it closes a bag, and the episode recorder closes it only after marking
it ``habc.complete`` (or never, when it dies; a restarted recorder renames such bags
``*.incomplete``). A bag without ``metadata.yaml`` is still being written and is never opened.

Episodes of a fleet are identified by ``<robot_id>/<episode_id>`` (two robots' recorders may
well pick the same episode id); the same identity in a second bag is a duplicate, reported and
never learned from twice. Windows carry the robot id through their episode
(:meth:`~habc_learner.core.replay.ReplayStore.window_robot_ids`), and a round's report breaks
success and takeovers down by robot (:func:`robot_breakdown`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from habc_learner.core.episode import HUMAN, Episode, Outcome

METADATA_NAME = "metadata.yaml"
INCOMPLETE_SUFFIX = ".incomplete"  # habc_learner.core.recorder's name for a dead recorder's bag


@dataclass(frozen=True)
class FleetBag:
    """One episode bag directory of robot ``robot_id``."""

    robot_id: str
    path: Path


def bag_is_closed(path: Path) -> bool:
    """The bag's writer closed it: ``metadata.yaml`` exists (rosbag2 writes it on close)."""
    return (path / METADATA_NAME).is_file()


def find_fleet_bags(roots: Sequence[Path]) -> tuple[list[FleetBag], list[Path]]:
    """``(closed bags, bags still being written)`` under ``<root>/<robot_id>/<episode>/``,
    sorted by robot then name; ``*.incomplete`` bags and loose files are ignored."""
    closed: list[FleetBag] = []
    writing: list[Path] = []
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"fleet root {root} does not exist")
        for robot in sorted(p for p in root.iterdir() if p.is_dir()):
            for bag in sorted(p for p in robot.iterdir() if p.is_dir()):
                if bag.name.endswith(INCOMPLETE_SUFFIX):
                    continue
                if bag_is_closed(bag):
                    closed.append(FleetBag(robot.name, bag.resolve()))
                elif any(bag.glob("*.mcap")) or any(bag.glob("*.db3")):
                    writing.append(bag.resolve())
    return closed, writing


def fleet_episode_id(robot_id: str, episode_id: str) -> str:
    """The fleet-wide identity of an episode: ``<robot_id>/<episode_id>``."""
    return f"{robot_id}/{episode_id}" if robot_id else episode_id


def count_takeovers(authority: np.ndarray) -> int:
    """Human takeovers of an episode: steps where some arm becomes HUMAN-controlled after a
    step with no arm HUMAN-controlled (a takeover at t = 0 counts)."""
    human = (np.asarray(authority) == HUMAN).any(axis=1)
    if human.size == 0:
        return 0
    starts = human[1:] & ~human[:-1]
    return int(starts.sum() + human[0])


@dataclass
class RobotStats:
    """One robot's episodes of a round: rollouts, their successes and human takeovers, and
    demonstrations (not rollouts: no success rate)."""

    rollouts: int = 0
    successes: int = 0
    takeovers: int = 0
    episodes_with_takeover: int = 0
    demonstrations: int = 0

    @property
    def success_rate(self) -> float:
        return self.successes / self.rollouts if self.rollouts else float("nan")

    def line(self, robot_id: str) -> str:
        rate = "n/a" if not self.rollouts else f"{self.success_rate:.0%}"
        return (
            f"robot {robot_id or '-'}: {self.rollouts} rollout(s), success {self.successes}/"
            f"{self.rollouts} ({rate}), {self.takeovers} takeover(s) in "
            f"{self.episodes_with_takeover} episode(s), {self.demonstrations} demo(s)"
        )


def robot_breakdown(episodes: Iterable[Episode]) -> dict[str, RobotStats]:
    """Per robot id (sorted): the success and takeover counts of ``episodes``."""
    stats: dict[str, RobotStats] = {}
    for ep in episodes:
        s = stats.setdefault(ep.robot_id, RobotStats())
        if ep.is_demonstration:
            s.demonstrations += 1
            continue
        s.rollouts += 1
        s.successes += int(ep.outcome == Outcome.SUCCESS)
        n = count_takeovers(ep.authority)
        s.takeovers += n
        s.episodes_with_takeover += int(n > 0)
    return dict(sorted(stats.items()))
