"""Pool workers die with the job that started them (no orphan training on after a kill)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_exit_when_the_job_is_killed(tmp_path: Path, sig: int) -> None:
    pids = tmp_path / "pids"
    job = textwrap.dedent(
        f"""
        import os, time
        from habc_learner.core.workers import worker_pool

        def work(i):
            with open({str(pids)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(120)  # a long training task

        if __name__ == "__main__":
            with worker_pool(2) as pool:
                list(pool.map(work, range(2)))
        """
    )
    script = tmp_path / "job.py"
    script.write_text(job)
    parent = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and len(pids.read_text().split() if pids.exists() else []) < 2:
            time.sleep(0.1)
        workers = [int(p) for p in pids.read_text().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        parent.send_signal(sig)
        parent.wait(timeout=10)
        end = time.monotonic() + 10
        while time.monotonic() < end and any(_alive(p) for p in workers):
            time.sleep(0.05)
        assert not any(_alive(p) for p in workers), "a worker outlived its job"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
