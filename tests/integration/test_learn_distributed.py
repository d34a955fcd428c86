"""habc-learn under torchrun (gloo, 2 ranks on CPU): rank 0 writes, a killed rank stops the job
cleanly without a half-written checkpoint, and a 2-rank checkpoint resumes on 1 rank."""

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
from habc_policy.core import checkpoint as ckpt

SMALL = [
    *("--method", "habc", "--batch-size", "8", "--threads", "1", "--min-new", "1"),
    *("--progress", "false", "--critic.hidden_dim", "32", "--critic.num_layers", "1"),
    *("--policy.hidden_dim", "64", "--policy.feature_dim", "32", "--policy.num_blocks", "2"),
]
TIMEOUT_S = 600.0


def _bags(folder: Path, scenarios: list[str], first_seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, scenario in enumerate(scenarios):
        ep = scenario_episode(scenario, seed=first_seed + i, length=80)
        write_episode(folder / f"{scenario}-{first_seed + i}", ep)


def _torchrun(bags: Path, out: Path, steps: int) -> subprocess.Popen:
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
        *("-m", "habc_learner.learn", "--bags", str(bags), "--out", str(out)),
        *("--steps", str(steps), *SMALL),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's worker ``rank`` (its environment says RANK=<rank>)."""
    try:
        children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    except FileNotFoundError:
        return None
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def _checkpoint_names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_two_ranks_train_a_killed_rank_stops_the_job_and_one_rank_resumes(tmp_path: Path) -> None:
    bags, out = tmp_path / "bags", tmp_path / "learner"
    _bags(bags / "demos", ["demo", "demo"], 0)
    _bags(bags / "round_01", ["autonomous_success", "takeover_failure"], 10)

    # One round on two ranks: one checkpoint, one TensorBoard log, one job state (rank 0's).
    proc = _torchrun(bags, out, steps=3)
    output = proc.communicate(timeout=TIMEOUT_S)[0].decode()
    assert proc.returncode == 0, output
    assert "2 processes, batch 8 each" in output and output.count("habc-learn: round 0") == 1
    assert _checkpoint_names(out) == ["LATEST", "step_000000003"]
    ckpt.read_checkpoint(out / "checkpoints" / "step_000000003")  # hashes verified
    assert len(list((out / "tensorboard").glob("events.*"))) == 1
    assert json.loads((out / STATE_NAME).read_text())["rounds"] == 1

    # A long second round; rank 1 is killed in the middle of it.
    _bags(bags / "round_02", ["two_takeovers"], 20)
    proc = _torchrun(bags, out, steps=100000)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while len(list((out / "tensorboard").glob("events.*"))) < 2:  # rank 0 trains
            assert time.monotonic() < deadline, "the job never started training"
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.5)
        pid = None
        while pid is None:
            assert time.monotonic() < deadline, "no rank 1 process found"
            assert proc.poll() is None, proc.stdout.read().decode()
            pid = _rank_pid(proc.pid, 1)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        output = proc.communicate(timeout=TIMEOUT_S)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # torchrun stopped the surviving rank and failed; nothing half-written is left.
    assert proc.returncode != 0, output
    assert _checkpoint_names(out) == ["LATEST", "step_000000003"], output
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step_000000003"
    assert json.loads((out / STATE_NAME).read_text())["rounds"] == 1

    # The 2-rank checkpoint resumes on one process: the redone round continues from step 3.
    assert main(["--bags", str(bags), "--out", str(out), "--steps", "2", *SMALL]) == 0
    assert _checkpoint_names(out) == ["LATEST", "step_000000003", "step_000000005"]
    ckpt.read_checkpoint(out / "checkpoints" / "step_000000005")  # hashes verified
    state = json.loads((out / STATE_NAME).read_text())
    assert state["rounds"] == 2 and len(state["consumed"]) == 5
