"""``habc-main --method ire_vla``: the same main job as HABC, iRe-VLA's stages in its rounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from habc_policy.core import checkpoint as ckpt

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_main_job_runs_ire_vla_rounds_and_resumes(tmp_path: Path) -> None:
    from habc_learner.main_job import main

    out = tmp_path / "run"
    args = [
        "--out",
        str(out),
        "--method",
        "ire_vla",
        "--demos",
        "3",
        "--sft-steps",
        "8",
        "--rounds",
        "2",
        "--rollouts",
        "2",
        "--round-steps",
        "4",
        "--eval-episodes",
        "1",
        "--batch-size",
        "16",
        "--threads",
        "1",
    ]
    assert main(args) == 0
    stages = json.loads((out / "summary.json").read_text())
    assert [s["stage"] for s in stages] == ["SFT", "ire_vla r1", "ire_vla r2"]
    assert [s["learner_step"] for s in stages] == [8, 12, 16]
    assert len({s["checkpoint_id"] for s in stages}) == 3
    root = out / "checkpoints" / "ire_vla"
    manifests = [ckpt.read_manifest(root / ckpt.checkpoint_name(step)) for step in (12, 16)]
    assert [m["method"] for m in manifests] == ["ire_vla", "ire_vla"]
    assert [m["round_index"] for m in manifests] == [1, 2]  # an RL round, then an SL round
    # Run again: the bags are reused and training resumes where it stopped (at the end, so
    # nothing is trained again and the schedule stays where it was).
    assert main(args) == 0
    again = json.loads((out / "summary.json").read_text())
    assert (
        again[-1]["learner_step"] == 16
        and again[-1]["checkpoint_id"] == stages[-1]["checkpoint_id"]
    )
    assert ckpt.read_manifest(ckpt.latest_checkpoint(root))["round_index"] == 2
    # each online round left its record (the round engine's), which the second run reused
    records = [json.loads((out / "rounds" / f"round_{k:02d}.json").read_text()) for k in (1, 2)]
    assert [r["evaluate"]["checkpoint_id"] for r in records] == [
        s["checkpoint_id"] for s in stages[1:]
    ]
    assert [r["learner_step"] for r in records] == [12, 16]
    assert records[0]["key"]["method"] == "ire_vla" and not (out / "rounds" / "error.json").exists()
