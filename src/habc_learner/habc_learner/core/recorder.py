"""Episode recording logic of the recorder node, without ROS: sessions, ids, disk, recovery.

The node hands over serialized messages; this module owns the bag of the running episode
(:class:`~habc_common.bag_format.EpisodeBagWriter`), the episode ids, the free-disk
check, and the recovery of bags a killed recorder left behind.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from habc_common import bag_format as bf

INCOMPLETE_SUFFIX = ".incomplete"


class RecorderError(RuntimeError):
    """A request the recorder refuses; the message says why."""


@dataclass(frozen=True)
class RecorderConfig:
    """Where and how episodes are recorded.

    Attributes:
        bag_dir: folder receiving one bag directory per episode.
        min_free_bytes: refuse to start (or to start an episode) below this free disk space.
        arms: arm name and action slice of each arm, e.g. (("left", 0, 7), ("right", 7, 14)).
        source: ``"rollout"`` (online episodes) or ``"demo"`` (teleoperated demonstrations).
    """

    bag_dir: Path
    min_free_bytes: int = 2 * 1024**3
    arms: tuple[tuple[str, int, int], ...] = (("left", 0, 7), ("right", 7, 14))
    source: str = "rollout"

    def __post_init__(self) -> None:
        if self.min_free_bytes < 0:
            raise ValueError(f"min_free_bytes must be >= 0, got {self.min_free_bytes}")
        if self.source not in bf.SOURCES:
            raise ValueError(f"source must be one of {bf.SOURCES}, got {self.source!r}")


def check_free_disk(folder: Path, min_free_bytes: int) -> None:
    """Raise :class:`RecorderError` when ``folder``'s file system has too little free space."""
    free = shutil.disk_usage(folder).free
    if free < min_free_bytes:
        raise RecorderError(
            f"only {free / 1024**3:.2f} GiB free on {folder} (need "
            f"{min_free_bytes / 1024**3:.2f} GiB): free disk space or lower min_free_gb"
        )


def recover_partial_bags(bag_dir: Path) -> list[Path]:
    """Rename every bag a killed recorder left open to ``<name>.incomplete``.

    A bag is partial when it has no ``metadata.yaml`` (the writer never closed it) or its
    ``custom_data`` does not say ``habc.complete: "true"``. Renamed bags stay on disk for
    inspection; the learner reads them, finds them incomplete and skips them with that reason.
    """
    renamed = []
    for path in sorted(p for p in bag_dir.iterdir() if p.is_dir()):
        if path.name.endswith(INCOMPLETE_SUFFIX) or not any(path.glob("*.mcap")):
            continue
        try:
            complete = bf.read_custom_data(path).get(bf.KEY_COMPLETE) == "true"
        except (FileNotFoundError, ValueError):
            complete = False
        if not complete:
            target = path.with_name(path.name + INCOMPLETE_SUFFIX)
            path.rename(target)
            renamed.append(target)
    return renamed


class EpisodeRecorder:
    """One episode bag at a time: ``start`` → ``write`` … → ``end``."""

    def __init__(self, config: RecorderConfig) -> None:
        self.config = config
        self.bag_dir = Path(config.bag_dir)
        self.bag_dir.mkdir(parents=True, exist_ok=True)
        check_free_disk(self.bag_dir, config.min_free_bytes)
        self.recovered = recover_partial_bags(self.bag_dir)
        self._writer: bf.EpisodeBagWriter | None = None
        self._counter = 0
        self.steps = 0
        #: ``(episode_id, reason, bag path)`` of the last episode lost to a write error (disk
        #: full): its bag was closed as far as possible and renamed ``*.incomplete``.
        self.lost: tuple[str, str, Path] | None = None

    @property
    def recording(self) -> bool:
        return self._writer is not None

    @property
    def episode_id(self) -> str:
        return "" if self._writer is None else self._writer.meta.episode_id

    @property
    def task(self) -> str:
        return "" if self._writer is None else self._writer.meta.task

    def _new_id(self) -> str:
        while True:
            self._counter += 1
            candidate = f"ep-{time.strftime('%Y%m%d-%H%M%S')}-{self._counter:04d}"
            if not (self.bag_dir / candidate).exists():
                return candidate

    def start(self, task: str, prompt: str, episode_id: str, t_ns: int) -> str:
        """Open the bag of a new episode; returns its id."""
        if self._writer is not None:
            raise RecorderError(f"episode {self.episode_id} is still running: end it first")
        check_free_disk(self.bag_dir, self.config.min_free_bytes)
        episode_id = episode_id or self._new_id()
        if (self.bag_dir / episode_id).exists():
            raise RecorderError(f"episode {episode_id!r} already exists in {self.bag_dir}")
        meta = bf.EpisodeMeta(episode_id, task, prompt, self.config.source, self.config.arms)
        writer = bf.EpisodeBagWriter(self.bag_dir / episode_id, meta)
        self.lost = None
        self.steps = 0
        try:
            writer.__enter__()
            self._writer = writer
            writer.write_event(t_ns, bf.EVENT_START, reason="start requested")
        except OSError as exc:
            if self._writer is not None:
                self._abandon(exc)
            raise RecorderError(f"could not start episode {episode_id}: {exc}") from exc
        return episode_id

    def write(self, topic: str, msgtype: str, t_ns: int, cdr: bytes) -> bool:
        """Record one serialized message (ignored between episodes).

        A write error (``ENOSPC`` when the disk fills, any ``OSError``) never propagates: the
        running episode is abandoned (:meth:`_abandon`) and ``False`` returned; earlier
        episodes' bags are closed files and stay intact.
        """
        if self._writer is None:
            return True
        try:
            self._writer.write_raw(topic, msgtype, t_ns, cdr)
        except OSError as exc:
            self._abandon(exc)
            return False
        if topic == bf.TOPIC_EXECUTED_COMMAND:
            self._writer.count_step()
            self.steps += 1
        return True

    def _abandon(self, exc: OSError) -> None:
        """Close the running episode's bag as far as the disk allows and rename it
        ``<id>.incomplete``: the learner skips it, nothing reads it as a finished episode."""
        writer, self._writer = self._writer, None
        assert writer is not None
        what = "disk full" if exc.errno == errno.ENOSPC else f"write error ({exc})"
        with contextlib.suppress(Exception):  # the disk is full: closing may fail too
            writer.__exit__(type(exc), exc, None)  # marks it aborted, if anything still fits
        target = writer.path.with_name(writer.path.name + INCOMPLETE_SUFFIX)
        try:
            writer.path.rename(target)
        except OSError:
            target = writer.path
        self.lost = (writer.meta.episode_id, f"{what} after {self.steps} steps", target)

    def end(
        self, outcome: str, marked_by: str, reason: str, t_ns: int, episode_id: str = ""
    ) -> tuple[str, int]:
        """Close the running episode with ``outcome``; returns ``(episode_id, steps)``."""
        if self._writer is None:
            if self.lost is not None and (not episode_id or episode_id == self.lost[0]):
                lost_id, why, path = self.lost
                raise RecorderError(
                    f"episode {lost_id} was lost: {why}; its partial bag is {path}, earlier "
                    "episodes are intact"
                )
            raise RecorderError("no episode is running")
        if episode_id and episode_id != self.episode_id:
            raise RecorderError(
                f"episode {episode_id!r} is not the running one ({self.episode_id})"
            )
        if outcome not in ("success", "failure", "aborted"):
            raise RecorderError(f"outcome must be success, failure or aborted, got {outcome!r}")
        writer = self._writer
        try:
            writer.write_event(t_ns, bf.EVENT_END, outcome, marked_by, reason)
            writer.finish(outcome, marked_by)
        except OSError as exc:  # the disk filled at the very end: the episode is lost
            self._abandon(exc)
            assert self.lost is not None
            raise RecorderError(
                f"episode {self.lost[0]} was lost: {self.lost[1]}; its partial bag is "
                f"{self.lost[2]}, earlier episodes are intact"
            ) from exc
        self._writer = None
        try:
            writer.__exit__(None, None, None)
        except OSError as exc:
            self._writer = writer
            self._abandon(exc)
            assert self.lost is not None
            raise RecorderError(
                f"episode {self.lost[0]} was lost while closing: {self.lost[1]}"
            ) from exc
        return writer.meta.episode_id, self.steps

    def close(self) -> None:
        """Shut down: a running episode ends as aborted (never learned from)."""
        if self._writer is not None:
            self.end("aborted", "recorder", "recorder shut down", time.time_ns())
