"""The round engine (``habc_learner.core.rounds``) with pure fakes: the order of the phases,
resume from the records on disk, and a failing round that keeps the rounds before it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from habc_learner.core.rounds import (
    Collected,
    JsonRoundRecords,
    Learned,
    RoundEngine,
    RoundFailure,
    RoundRecord,
    write_json_atomic,
)


class FakeJob:
    """Collect / learn / evaluate that log their calls; round k's checkpoint is ``ck{k}``,
    its learner step 10·k; ``fail_at`` makes that round's learn raise."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_at = fail_at

    def collect(self, k: int, policy: Path) -> Collected:
        self.calls.append(("collect", k, policy.name))
        return Collected(stats={"episodes": k}, data=f"bags{k}")

    def learn(self, k: int, start: Path, collected: Collected) -> Learned:
        self.calls.append(("learn", k, start.name, collected.data))
        if k == self.fail_at:
            raise RuntimeError(f"learner crashed in round {k}")
        return Learned(Path(f"ck{k}"), 10 * k, {"loss": 1.0 / k})

    def evaluate(self, k: int, checkpoint: Path) -> dict:
        self.calls.append(("evaluate", k, checkpoint.name))
        return {"success_rate": k / 4}

    def engine(self, records, **kw) -> RoundEngine:
        return RoundEngine(self.collect, self.learn, self.evaluate, records, **kw)


class MemoryRecords:
    def __init__(self) -> None:
        self.saved: dict[int, RoundRecord] = {}
        self.failures: list[RoundFailure] = []

    def load(self, k: int) -> RoundRecord | None:
        return self.saved.get(k)

    def save(self, record: RoundRecord) -> None:
        self.saved[record.round] = record

    def fail(self, failure: RoundFailure) -> None:
        self.failures.append(failure)


def test_phases_run_in_order_each_round_from_the_previous_checkpoint() -> None:
    job, records = FakeJob(), MemoryRecords()
    ticks = iter(range(100))
    seen: list[tuple[int, bool]] = []
    outcome = job.engine(
        records, clock=lambda: float(next(ticks)), on_round=lambda r, re: seen.append((r.round, re))
    ).run([1, 2, 3], Path("sft"))
    assert job.calls == [
        ("collect", 1, "sft"),
        ("learn", 1, "sft", "bags1"),
        ("evaluate", 1, "ck1"),
        ("collect", 2, "ck1"),
        ("learn", 2, "ck1", "bags2"),
        ("evaluate", 2, "ck2"),
        ("collect", 3, "ck2"),
        ("learn", 3, "ck2", "bags3"),
        ("evaluate", 3, "ck3"),
    ]
    assert outcome.ran == [1, 2, 3] and outcome.reused == [] and outcome.failure is None
    assert seen == [(1, False), (2, False), (3, False)]
    r2 = records.saved[2]
    assert r2.checkpoint == Path("ck2") and r2.learner_step == 20
    assert r2.collect == {"episodes": 2} and r2.learn == {"loss": 0.5}
    assert r2.evaluate == {"success_rate": 0.5}
    # the clock ticks once per phase boundary: 4 readings a round, each phase 1 s
    assert r2.wall_s == {"collect": 1.0, "learn": 1.0, "evaluate": 1.0}
    assert outcome.checkpoint(Path("sft")) == Path("ck3")


def test_resume_skips_the_rounds_with_records_on_disk(tmp_path: Path) -> None:
    key = {"round_steps": 4, "method": "habc", "poses": (1, 2)}
    first = FakeJob()
    first.engine(JsonRoundRecords(tmp_path, key)).run([1, 2], Path("sft"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_01.json", "round_02.json"]
    on_disk = json.loads((tmp_path / "round_02.json").read_text())
    assert on_disk["key"] == {"round_steps": 4, "method": "habc", "poses": [1, 2]}
    assert on_disk["checkpoint"] == "ck2" and on_disk["evaluate"] == {"success_rate": 0.5}

    again = FakeJob()
    seen: list[tuple[int, bool]] = []
    outcome = again.engine(
        JsonRoundRecords(tmp_path, key), on_round=lambda r, re: seen.append((r.round, re))
    ).run([1, 2, 3], Path("sft"))
    # only round 3 runs, from round 2's recorded checkpoint
    assert again.calls == [
        ("collect", 3, "ck2"),
        ("learn", 3, "ck2", "bags3"),
        ("evaluate", 3, "ck3"),
    ]
    assert outcome.reused == [1, 2] and outcome.ran == [3]
    assert [r.round for r in outcome.records] == [1, 2, 3]
    assert outcome.records[0].evaluate == {"success_rate": 0.25}  # read back from disk
    assert seen == [(1, True), (2, True), (3, False)]


def test_a_record_made_under_another_key_is_run_again(tmp_path: Path) -> None:
    FakeJob().engine(JsonRoundRecords(tmp_path, {"round_steps": 4})).run([1], Path("sft"))
    other = FakeJob()
    outcome = other.engine(JsonRoundRecords(tmp_path, {"round_steps": 8})).run([1], Path("sft"))
    assert outcome.ran == [1] and outcome.reused == []
    assert [c[0] for c in other.calls] == ["collect", "learn", "evaluate"]
    assert json.loads((tmp_path / "round_01.json").read_text())["key"] == {"round_steps": 8}


def test_a_failing_round_is_recorded_and_keeps_the_rounds_before_it(tmp_path: Path) -> None:
    records = JsonRoundRecords(tmp_path, {"k": 1})
    job = FakeJob(fail_at=2)
    outcome = job.engine(records).run([1, 2, 3], Path("sft"))
    assert outcome.ran == [1] and [r.round for r in outcome.records] == [1]
    assert outcome.failure is not None and outcome.failure.round == 2
    assert outcome.failure.error == "RuntimeError: learner crashed in round 2"
    assert isinstance(outcome.failure.exception, RuntimeError)
    assert all(c[1] != 3 for c in job.calls)  # the run stops at the failing round
    assert ("evaluate", 2, "ck2") not in job.calls
    error = json.loads((tmp_path / "error.json").read_text())
    assert error["round"] == 2 and error["error"] == "RuntimeError: learner crashed in round 2"
    assert "learner crashed in round 2" in error["traceback"] and "Traceback" in error["traceback"]
    assert (tmp_path / "round_01.json").exists() and not (tmp_path / "round_02.json").exists()
    assert outcome.checkpoint(Path("sft")) == Path("ck1")
    # fixed and started again: round 1 is reused, 2 and 3 run, the error goes away
    fixed = FakeJob()
    again = fixed.engine(records).run([1, 2, 3], Path("sft"))
    assert again.reused == [1] and again.ran == [2, 3] and again.failure is None
    assert fixed.calls[0] == ("collect", 2, "ck1")
    assert not (tmp_path / "error.json").exists()


def test_a_record_that_cannot_be_loaded_fails_its_round() -> None:
    class Refusing(MemoryRecords):
        def load(self, k: int) -> RoundRecord | None:
            if k == 2:
                raise ValueError("round 2 was made with another budget")
            return super().load(k)

    records, job = Refusing(), FakeJob()
    outcome = job.engine(records).run([1, 2], Path("sft"))
    assert outcome.ran == [1] and outcome.failure is not None and outcome.failure.round == 2
    assert records.failures[0].error == "ValueError: round 2 was made with another budget"
    assert [c[1] for c in job.calls] == [1, 1, 1]


def test_round_record_round_trips_through_json(tmp_path: Path) -> None:
    rec = RoundRecord(3, Path("a/ck3"), 30, {"n": 1}, {"loss": 0.25}, {"ok": 1}, {"learn": 2.0})
    path = tmp_path / "r.json"
    write_json_atomic(path, {**rec.to_dict(), "extra": np.float32(0.5), "arr": np.arange(2)})
    data = json.loads(path.read_text())
    assert RoundRecord.from_dict(data) == rec
    assert data["extra"] == 0.5 and data["arr"] == [0, 1]
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        write_json_atomic(tmp_path / "bad.json", {"x": object()})


def test_bringup_job_rows_pair_each_round_with_the_checkpoint_that_drove_it() -> None:
    """The bringup job's report: round k's graph figures beside the evaluation of the
    checkpoint that drove round k (SFT for round 1, round k−1's for the others), then the
    final checkpoint's row."""
    from habc_learner.bringup_job import round_results
    from habc_learner.main_job import StageResult

    def record(k: int, serving: str, step: int, rate: float) -> RoundRecord:
        collect = {"checkpoint_id": f"c{k}", "episodes": 4, "success": k, "autonomous_success": 1}
        collect |= {"takeovers": 2, "aborted": 0}
        return RoundRecord(
            round=k,
            checkpoint=Path(f"/ckpt/{serving}"),
            learner_step=step,
            collect=collect,
            learn={"serving": serving},
            evaluate={"success_rate": rate, "mean_success_length": 100.0 + k},
            wall_s={},
        )

    sft = StageResult("r1", "c1", 30, 0.5, 90.0, 10)
    rows = round_results([record(1, "c2", 35, 0.6), record(2, "c3", 40, 0.7)], sft)
    assert [(r.round, r.checkpoint_id, r.learner_step) for r in rows] == [
        (1, "c1", 30),
        (2, "c2", 35),
        (3, "c3", 40),
    ]
    assert [r.eval_success_rate for r in rows] == [0.5, 0.6, 0.7]
    assert [r.eval_mean_length for r in rows] == [90.0, 101.0, 102.0]
    assert [r.success for r in rows] == [1, 2, 0] and rows[-1].episodes == 0  # the final row
