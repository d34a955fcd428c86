"""habc-launch supervises real processes: prefixed output, Ctrl-C, required nodes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

NODE = textwrap.dedent(
    """\
    #!{python}
    import signal, sys, time, pathlib
    name = sys.argv[sys.argv.index("-r") + 1].split(":=")[1]
    pathlib.Path("{pids}", name).write_text(str(__import__("os").getpid()))
    def bye(signum, frame):
        pathlib.Path("{pids}", name + ".sigint").write_text("1")
        sys.exit(0)
    signal.signal(signal.SIGINT, bye)
    print("hello from", name, flush=True)
    life = float("{life}") if name == "short" else 1e9
    end = time.time() + life
    while time.time() < end:
        time.sleep(0.05)
    sys.exit(3)
    """
)


def _workspace(tmp_path: Path, required_short: bool) -> tuple[Path, Path, dict[str, str]]:
    prefix, config, pids = tmp_path / "install", tmp_path / "config", tmp_path / "pids"
    pids.mkdir()
    (prefix / "lib" / "demo_pkg").mkdir(parents=True)
    config.mkdir()
    exe = prefix / "lib" / "demo_pkg" / "node"
    exe.write_text(NODE.format(python=sys.executable, pids=pids, life=1.5))
    exe.chmod(0o755)
    (config / "graph.yaml").write_text(
        textwrap.dedent(
            f"""\
            arguments:
              mode: {{default: a}}
            nodes:
              - {{name: long, package: demo_pkg, executable: node}}
              - {{name: short, package: demo_pkg, executable: node, required: {required_short},
                  if: mode == b}}
            """
        )
    )
    env = dict(os.environ, AMENT_PREFIX_PATH=str(prefix), PYTHONUNBUFFERED="1")
    return config, pids, env


def _launch(config: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "habc_learner.launcher",
            "--config-dir",
            str(config),
            "--grace",
            "3",
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_stops_every_node(tmp_path: Path) -> None:
    config, pids, env = _workspace(tmp_path, required_short=False)
    proc = _launch(config, env, "mode:=b")
    _wait(pids / "long")
    _wait(pids / "short")
    time.sleep(2.5)  # the optional node "short" ends by itself after 1.5 s
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert "[long ] hello from long" in out
    # The optional node that ended by itself is reported, the rest got SIGINT and is gone.
    assert "short exited with code 3" in out
    assert (pids / "long.sigint").exists()
    assert not _alive(int((pids / "long").read_text()))


def test_required_node_exit_takes_the_graph_down(tmp_path: Path) -> None:
    config, pids, env = _workspace(tmp_path, required_short=True)
    proc = _launch(config, env, "mode:=b")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert "required node short is gone: stopping" in out
    assert (pids / "long.sigint").exists()


def test_condition_and_errors(tmp_path: Path) -> None:
    config, _pids, env = _workspace(tmp_path, required_short=False)
    printed = subprocess.run(
        [sys.executable, "-m", "habc_learner.launcher", "--config-dir", str(config), "--print"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "__node:=long" in printed and "__node:=short" not in printed
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "habc_learner.launcher",
            "--config-dir",
            str(config),
            "mode:=c",
            "nope",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "expected name:=value" in bad.stderr
    env["AMENT_PREFIX_PATH"] = str(tmp_path / "empty")
    missing = subprocess.run(
        [sys.executable, "-m", "habc_learner.launcher", "--config-dir", str(config)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2 and "not found in AMENT_PREFIX_PATH" in missing.stderr


def test_launcher_imports_without_rclpy() -> None:
    """The launcher module imports without rclpy (it only starts processes)."""
    code = "import sys, habc_learner.launcher; assert 'rclpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
