"""habc-learn: learner jobs over bag folders, skipping bad bags, resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from habc_learner.core.bag_reader import write_episode
from habc_learner.core.episode import scenario_episode
from habc_learner.learn import STATE_NAME, main

ARGS = ["--method", "habc", "--batch-size", "16", "--threads", "1", "--min-new", "1"]


def _bags(folder: Path, scenarios: list[str], first_seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, scenario in enumerate(scenarios):
        ep = scenario_episode(scenario, seed=first_seed + i, length=80)
        write_episode(folder / f"{scenario}-{first_seed + i}", ep)


def _state(out: Path) -> dict:
    return json.loads((out / STATE_NAME).read_text())


def test_rounds_over_a_bag_folder_skip_bad_bags_and_continue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bags, out = tmp_path / "bags", tmp_path / "learner"
    _bags(bags / "demos", ["demo", "demo"], 0)
    _bags(bags / "round_01", ["autonomous_success", "takeover_failure"], 10)
    (bags / "round_01" / "broken").mkdir()
    (bags / "round_01" / "broken" / "broken.mcap").write_bytes(b"not an mcap file")
    os.utime(bags / "round_01" / "broken" / "broken.mcap", (0, 0))  # not a live recording

    assert main(["--bags", str(bags), "--out", str(out), "--steps", "3", *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "skipped broken: no metadata.yaml" in printed
    state = _state(out)
    assert len(state["consumed"]) == 4 and state["rounds"] == 1
    assert any(p.endswith("broken") for p in state["skipped"])
    manifest = json.loads((out / "checkpoints" / "step_000000003" / "manifest.json").read_text())
    assert manifest["learner_step"] == 3

    # Nothing new: no round.
    assert main(["--bags", str(bags), "--out", str(out), "--steps", "3", *ARGS]) == 1
    # New episodes: the next round continues the same run from step 3.
    _bags(bags / "round_02", ["two_takeovers"], 20)
    assert main(["--bags", str(bags), "--out", str(out), "--steps", "3", *ARGS]) == 0
    assert (out / "checkpoints" / "step_000000006").is_dir()
    assert _state(out)["rounds"] == 2 and len(_state(out)["consumed"]) == 5


def test_bad_arguments_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--bags", str(tmp_path), "--out", str(tmp_path / "o"), "--method", "habx"]) == 2
    err = capsys.readouterr().err
    assert "--method" in err and "'habx'" in err and "habc_ir" in err  # the key and the choices
    assert main(["--bags", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_learner_killed_mid_round_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    bags, out = tmp_path / "bags", tmp_path / "learner"
    _bags(bags / "demos", ["demo", "demo"], 0)
    assert main(["--bags", str(bags), "--out", str(out), "--steps", "2", *ARGS]) == 0
    _bags(bags / "round_01", ["autonomous_success"], 5)
    cmd = [
        sys.executable,
        "-m",
        "habc_learner.learn",
        "--bags",
        str(bags),
        "--out",
        str(out),
        "--steps",
        "100000",
        *ARGS,
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Wait until it trains: its own TensorBoard event file appears beside round 1's.
        deadline = time.monotonic() + 120
        while len(list((out / "tensorboard").glob("events.*"))) < 2:
            assert time.monotonic() < deadline, "the learner never started training"
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.5)
        time.sleep(2.0)
        assert proc.poll() is None, proc.stdout.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The kill left the first checkpoint and the state of round 1 untouched.
    state = _state(out)
    assert state["rounds"] == 1 and len(state["consumed"]) == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step")) == [
        "step_000000002"
    ]
    # Restarted, the job redoes round 2 from step 2 with the episode it had not consumed.
    assert main(["--bags", str(bags), "--out", str(out), "--steps", "2", *ARGS]) == 0
    assert (out / "checkpoints" / "step_000000004").is_dir()
    assert _state(out)["rounds"] == 2 and len(_state(out)["consumed"]) == 3


def test_a_diverged_round_writes_no_checkpoint_and_the_next_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Divergence injected as an inf weight from the round's second gradient step on (a real
    round otherwise): no checkpoint of the diverged model is written (LATEST and every earlier
    checkpoint stay), and the next round starts again from the last good checkpoint."""
    import math

    import torch

    from habc_learner.core.trainer import Trainer
    from habc_learner.learn import LearnerJob, LearnerJobConfig
    from habc_policy.core.checkpoint import DivergedModelError, latest_checkpoint, load_policy

    bags, out = tmp_path / "bags", tmp_path / "learner"
    _bags(bags / "demos", ["demo", "demo"], 0)
    assert main(["--bags", str(bags), "--out", str(out), "--steps", "3", *ARGS]) == 0
    ckpts = out / "checkpoints"
    before = sorted(p.name for p in ckpts.iterdir())
    assert latest_checkpoint(ckpts).name == "step_000000003"

    real_step = Trainer.train_step

    def diverging_step(self: Trainer) -> dict:
        info = real_step(self)
        if self.learner_step >= 5:
            with torch.no_grad():
                next(self.policy.parameters()).view(-1)[0] = math.inf
        return info

    monkeypatch.setattr(Trainer, "train_step", diverging_step)
    _bags(bags / "round_01", ["autonomous_success"], 5)
    config = LearnerJobConfig(
        bag_dirs=(bags,),
        out_dir=out,
        method="habc",
        steps_per_round=3,
        min_new_episodes=1,
        batch_size=16,
    )
    job = LearnerJob(config)
    job.scan()
    assert job.ready
    with pytest.raises(DivergedModelError, match=r"non-finite values in model\.safetensors"):
        job.run_round()
    job.close()
    assert sorted(p.name for p in ckpts.iterdir()) == before  # nothing new, nothing lost
    assert latest_checkpoint(ckpts).name == "step_000000003"
    load_policy(latest_checkpoint(ckpts))  # still loads and verifies

    monkeypatch.setattr(Trainer, "train_step", real_step)
    _bags(bags / "round_02", ["two_takeovers"], 20)
    assert main(["--bags", str(bags), "--out", str(out), "--steps", "3", *ARGS]) == 0
    assert latest_checkpoint(ckpts).name == "step_000000006"  # resumed from step 3


def test_a_bag_closed_after_the_live_window_is_read_once_it_closes(tmp_path: Path) -> None:
    """A recorder stalled past the 30 s live window (a loaded machine: 38 s in one CI run):
    the scan skips its bag as never closed, and reports it once. When the recorder then closes
    it (metadata.yaml written), the next scan reads it. Before, it stayed skipped for good,
    and the bringup job waited for a round that never came."""
    from habc_learner.learn import LearnerJob, LearnerJobConfig

    bags = tmp_path / "bags"
    _bags(bags, ["autonomous_success"], 0)
    (bag,) = bags.iterdir()
    meta = bag / "metadata.yaml"
    closed = meta.read_text()
    meta.unlink()
    quiet = time.time() - 60.0
    for f in bag.iterdir():
        os.utime(f, (quiet, quiet))
    job = LearnerJob(
        LearnerJobConfig(
            bag_dirs=(bags,),
            out_dir=tmp_path / "out",
            method="habc",
            steps_per_round=1,
            min_new_episodes=1,
            batch_size=16,
        )
    )
    first = job.scan()
    assert [(p.name, r.split(":")[0]) for p, r in first.skipped] == [(bag.name, "no metadata.yaml")]
    again = job.scan()  # unchanged: still skipped, not reported again
    assert not again.used and not again.skipped and not job.ready
    meta.write_text(closed)  # the recorder closes the bag
    later = job.scan()
    assert len(later.used) == 1 and not later.skipped and job.ready
    assert str(bag) not in job.skipped
    job.close()
