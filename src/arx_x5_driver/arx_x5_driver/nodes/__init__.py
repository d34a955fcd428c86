"""ROS 2 nodes of the driver package: thin adapters around :mod:`arx_x5_driver.core`."""

from __future__ import annotations

from typing import Any


def declare(node: Any, name: str, default: Any, description: str) -> Any:
    """Declare a read-only parameter (set from the params file at start) and return its value."""
    from rcl_interfaces.msg import ParameterDescriptor

    return node.declare_parameter(
        name, default, ParameterDescriptor(description=description, read_only=True)
    ).value
