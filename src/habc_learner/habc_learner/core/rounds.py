"""One round engine: collect → learn → evaluate, round after round, resumable from its records.

An online round of every job in this package has the same shape: run the current policy and
write what happened as episode bags (*collect*), train the learner on the store those bags
feed and save a checkpoint (*learn*), measure the new checkpoint on held-out poses
(*evaluate*). :class:`RoundEngine` owns that sequence and nothing else (pure: no torch, no
ROS, no simulator); the job hands it three callables:

- ``collect(k, policy) -> Collected``: round ``k``'s data from the checkpoint ``policy`` (the
  previous round's, or the start). ``Collected.stats`` goes into the record; ``.data`` is
  handed to ``learn`` only (folders, producers, anything not JSON).
- ``learn(k, start, collected) -> Learned``: training from the checkpoint ``start``; the new
  checkpoint, its learner step and the statistics to record.
- ``evaluate(k, checkpoint) -> dict``: the new checkpoint's evaluation, recorded as is.

and a :class:`RoundRecords` store. Each finished round is saved as one :class:`RoundRecord`
before the next starts; a round whose record loads is not run again (its checkpoint starts the
next round), so a job started again after a crash resumes at the first round without a record.
A round that raises is handed to ``records.fail`` and ends the run; the rounds before it keep
their records (:attr:`RoundsOutcome.failure` says which round failed and why).

Users: :mod:`habc_learner.main_job` (one method, bags per round under ``--out``), the
protocol's online rounds (:mod:`habc_learner.protocol.run`, one engine per method and step) and
:mod:`habc_learner.bringup_job` (the node graph collects, the learner node learns).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: The record's wall-time keys, one per phase.
PHASES = ("collect", "learn", "evaluate")


@dataclass(frozen=True)
class Collected:
    """What ``collect`` produced: ``stats`` for the record, ``data`` for ``learn`` only."""

    stats: dict[str, Any] = field(default_factory=dict)
    data: Any = None


@dataclass(frozen=True)
class Learned:
    """What ``learn`` produced: the new checkpoint, its learner step, statistics to record."""

    checkpoint: Path
    learner_step: int
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundRecord:
    """One finished round: the checkpoint it produced and what each phase reported.

    Attributes:
        round: the round index ``k`` the job gave the engine.
        checkpoint: the checkpoint ``learn`` saved (the next round's policy).
        learner_step: its learner step.
        collect, learn, evaluate: the phases' statistics (``Collected.stats``,
            ``Learned.stats``, ``evaluate``'s dict).
        wall_s: seconds per phase (keys :data:`PHASES`).
    """

    round: int
    checkpoint: Path
    learner_step: int
    collect: dict[str, Any]
    learn: dict[str, Any]
    evaluate: dict[str, Any]
    wall_s: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "checkpoint": str(self.checkpoint),
            "learner_step": self.learner_step,
            "collect": self.collect,
            "learn": self.learn,
            "evaluate": self.evaluate,
            "wall_s": self.wall_s,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundRecord:
        return cls(
            round=int(d["round"]),
            checkpoint=Path(d["checkpoint"]),
            learner_step=int(d["learner_step"]),
            collect=dict(d.get("collect", {})),
            learn=dict(d.get("learn", {})),
            evaluate=dict(d.get("evaluate", {})),
            wall_s=dict(d.get("wall_s", {})),
        )


@dataclass(frozen=True)
class RoundFailure:
    """A round that raised: its index, ``"Type: message"`` and the formatted traceback."""

    round: int
    error: str
    traceback: str
    exception: BaseException

    @classmethod
    def of(cls, round_index: int, exc: BaseException) -> RoundFailure:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(round_index, f"{type(exc).__name__}: {exc}", tb, exc)


@dataclass
class RoundsOutcome:
    """Every round's record in order (run now or reused), which were run and which reused,
    and the failure that ended the run early (None: every round finished)."""

    records: list[RoundRecord]
    ran: list[int]
    reused: list[int]
    failure: RoundFailure | None = None

    def checkpoint(self, start: Path) -> Path:
        """The newest round's checkpoint (``start`` when no round finished)."""
        return self.records[-1].checkpoint if self.records else start


class RoundRecords(Protocol):
    """Where a job keeps its round records (a folder of JSON files, or the protocol's)."""

    def load(self, round_index: int) -> RoundRecord | None:
        """Round ``round_index``'s record, or None when the round has to run."""

    def save(self, record: RoundRecord) -> None:
        """Keep a finished round (atomically: a crash never leaves half a record)."""

    def fail(self, failure: RoundFailure) -> None:
        """Keep a round that raised."""


Collect = Callable[[int, Path], Collected]
Learn = Callable[[int, Path, Collected], Learned]
Evaluate = Callable[[int, Path], dict[str, Any]]


class RoundEngine:
    """Runs rounds ``collect → learn → evaluate`` in order, saving one record per round.

    ``on_round(record, reused)`` (optional) is called after each round, run (``reused``
    False, after its record is saved) or taken from its record (``reused`` True): progress
    output. ``clock`` measures the phases' wall time.
    """

    def __init__(
        self,
        collect: Collect,
        learn: Learn,
        evaluate: Evaluate,
        records: RoundRecords,
        *,
        on_round: Callable[[RoundRecord, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.collect = collect
        self.learn = learn
        self.evaluate = evaluate
        self.records = records
        self.on_round = on_round
        self.clock = clock

    def run_round(self, k: int, policy: Path) -> RoundRecord:
        """Round ``k`` from the checkpoint ``policy``: its three phases and its record."""
        t0 = self.clock()
        collected = self.collect(k, policy)
        t1 = self.clock()
        learned = self.learn(k, policy, collected)
        t2 = self.clock()
        ev = self.evaluate(k, learned.checkpoint)
        t3 = self.clock()
        return RoundRecord(
            round=k,
            checkpoint=Path(learned.checkpoint),
            learner_step=int(learned.learner_step),
            collect=dict(collected.stats),
            learn=dict(learned.stats),
            evaluate=dict(ev),
            wall_s=dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2))),
        )

    def run(self, rounds: Iterable[int], start: Path) -> RoundsOutcome:
        """Every round of ``rounds`` in order, the first from ``start``, each later one from
        the previous round's checkpoint; a round with a record is reused, not run. Stops at the
        first round that raises (loading its record included) after ``records.fail``."""
        outcome = RoundsOutcome(records=[], ran=[], reused=[])
        policy = Path(start)
        for k in rounds:
            try:
                record = self.records.load(k)
                reused = record is not None
                if record is None:
                    record = self.run_round(k, policy)
                    self.records.save(record)
            except Exception as exc:
                outcome.failure = RoundFailure.of(k, exc)
                self.records.fail(outcome.failure)
                return outcome
            (outcome.reused if reused else outcome.ran).append(k)
            outcome.records.append(record)
            policy = record.checkpoint
            if self.on_round is not None:
                self.on_round(record, reused)
        return outcome


# ------------------------------------------------------------------------------ JSON records
def write_json_atomic(path: Path, data: Any, indent: int | None = 1) -> None:
    """Atomic JSON write (a crash never leaves a half record that looks complete); numpy
    scalars and arrays and paths are written as plain JSON, NaN as ``NaN``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, default=_json_default, allow_nan=True))
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _as_json(obj: Any) -> Any:
    """``obj`` after a JSON round trip (tuples become lists, paths strings)."""
    return json.loads(json.dumps(obj, default=_json_default))


class JsonRoundRecords:
    """``<folder>/round_<k>.json`` per round, stamped with ``key`` (what a round's result
    depends on: the job's budget). A record made under another key is not reused (the round
    runs again and its record is replaced); a failure is ``<folder>/error.json``."""

    def __init__(self, folder: Path, key: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.key = key

    def path(self, round_index: int) -> Path:
        return self.folder / f"round_{round_index:02d}.json"

    def load(self, round_index: int) -> RoundRecord | None:
        path = self.path(round_index)
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        if data.get("key") != _as_json(self.key):
            return None
        return RoundRecord.from_dict(data)

    def save(self, record: RoundRecord) -> None:
        write_json_atomic(self.path(record.round), {"key": self.key, **record.to_dict()})
        (self.folder / "error.json").unlink(missing_ok=True)

    def fail(self, failure: RoundFailure) -> None:
        write_json_atomic(
            self.folder / "error.json",
            {"round": failure.round, "error": failure.error, "traceback": failure.traceback},
        )
