"""ROS 2 nodes of habc_learner (thin adapters over habc_learner.core)."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_node(
    name: str,
    make_node: Callable[[], object],
    startup_errors: tuple[type[BaseException], ...],
    args: list[str] | None = None,
    threads: int = 1,
) -> int:
    """Init rclpy, build the node (a startup error exits 1 with its message), spin until
    Ctrl-C or shutdown, then destroy the node and shut down (Humble/Jazzy/Kilted alike)."""
    import rclpy
    from rclpy.executors import (
        ExternalShutdownException,
        MultiThreadedExecutor,
        SingleThreadedExecutor,
    )

    rclpy.init(args=args)
    try:
        node = make_node()
    except startup_errors as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    executor = (
        MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
    )
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
