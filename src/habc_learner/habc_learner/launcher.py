"""habc-launch: start the bringup graph of ``config/graph.yaml`` without launch_ros.

    habc-launch                                   # sim, scripted operator, learner
    habc-launch backend:=arx operator:=joystick learner:=false
    habc-launch --print                           # show the command lines, start nothing

The same graph ``ros2 launch habc bringup.launch.py`` starts, from the same description. Each
node runs as its own process with its output prefixed by its name; a *required* node that
exits takes the whole graph down; Ctrl-C (SIGINT) or SIGTERM stops every node: SIGINT first,
SIGTERM after ``--grace`` seconds, SIGKILL last.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from habc_learner.bringup import NodeSpec, load_graph, resolve


def find_executable(spec: NodeSpec) -> Path:
    """``<prefix>/lib/<package>/<executable>`` of the first ament prefix that has it."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        candidate = Path(prefix) / "lib" / spec.package / spec.executable
        if prefix and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        f"node {spec.name!r}: executable {spec.executable!r} of package {spec.package!r} not "
        "found in AMENT_PREFIX_PATH (build the workspace and `source env.sh`; for the joystick "
        "operator install the ROS 'joy' package)"
    )


def command_line(spec: NodeSpec) -> list[str]:
    return [str(find_executable(spec)), *spec.ros_args()]


class Supervisor:
    """Runs the node processes and tears them down together."""

    def __init__(self, specs: Sequence[NodeSpec], grace_s: float = 10.0) -> None:
        self.specs = list(specs)
        self.grace_s = grace_s
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = threading.Event()
        self.exit_code = 0

    def _pump(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        width = max(len(s.name) for s in self.specs)
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            sys.stdout.write(f"[{name:<{width}}] {line}\n")
            sys.stdout.flush()

    def start(self) -> None:
        commands = {spec.name: command_line(spec) for spec in self.specs}  # fail before starting
        for spec in self.specs:
            proc = subprocess.Popen(
                commands[spec.name],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our signals reach it only when we send them
            )
            self.procs[spec.name] = proc
            threading.Thread(target=self._pump, args=(spec.name, proc), daemon=True).start()
            print(f"[habc-launch] started {spec.name} (pid {proc.pid})", flush=True)

    def watch(self) -> int:
        """Block until a required node exits or :meth:`stop` is called; returns an exit code."""
        required = {s.name for s in self.specs if s.required}
        reported: set[str] = set()
        while not self._stopping.is_set():
            for name, proc in self.procs.items():
                code = proc.poll()
                if code is None or name in reported:
                    continue
                reported.add(name)
                print(f"[habc-launch] {name} exited with code {code}", flush=True)
                if name in required:
                    print(f"[habc-launch] required node {name} is gone: stopping", flush=True)
                    self.exit_code = code or 1
                    self._stopping.set()
            self._stopping.wait(0.2)
        self.stop()
        return self.exit_code

    def stop(self) -> None:
        self._stopping.set()
        alive = [p for p in self.procs.values() if p.poll() is None]
        for sig, wait_s in (
            (signal.SIGINT, self.grace_s),
            (signal.SIGTERM, 5.0),
            (signal.SIGKILL, 5.0),
        ):
            for proc in alive:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
            deadline = time.monotonic() + wait_s
            while alive and time.monotonic() < deadline:
                alive = [p for p in alive if p.poll() is None]
                time.sleep(0.05)
            if not alive:
                return


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="habc-launch", description=__doc__.split("\n\n")[0])
    p.add_argument("arguments", nargs="*", metavar="name:=value", help="launch arguments")
    p.add_argument("--config-dir", type=Path, default=None, help="folder of graph.yaml")
    p.add_argument("--print", action="store_true", help="print the command lines and exit")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between SIGINT and SIGTERM")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    given = {}
    for item in args.arguments:
        name, sep, value = item.partition(":=")
        if not sep:
            print(f"habc-launch: error: expected name:=value, got {item!r}", file=sys.stderr)
            return 2
        given[name] = value
    try:
        graph = load_graph(args.config_dir)
        specs = resolve(graph, given)
        if args.print:
            for spec in specs:
                print(shlex.join(command_line(spec)))
            return 0
        supervisor = Supervisor(specs, grace_s=args.grace)
        supervisor.start()
    except (ValueError, FileNotFoundError) as exc:
        print(f"habc-launch: error: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: object) -> None:
        print(f"[habc-launch] {signal.Signals(signum).name}: stopping every node", flush=True)
        supervisor._stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return supervisor.watch()


if __name__ == "__main__":
    sys.exit(main())
