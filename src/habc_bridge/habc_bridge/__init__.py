"""habc_bridge: bring your own VLA.

- ``habc_bridge.core``: pure modules (no rclpy): openpi's msgpack-numpy wire format and
  websocket policy protocol, the remote-policy client the policy server's ``remote`` backend
  uses, a websocket policy server, per-frame HABC labels for export.
- ``habc_bridge.lerobot``: LeRobotDataset export/import and HABC-weighted LeRobot training; runs
  only in the LeRobot environment (``.venv-lerobot``, Python 3.12), never imports rclpy.
- ``habc_bridge.serve`` / ``habc_bridge.lerobot_cli``: the command-line entry points.
"""
