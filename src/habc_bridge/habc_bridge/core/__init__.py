"""Pure core of habc_bridge: wire format, protocol, remote client, websocket server, labels.

Nothing in this package imports rclpy or any ROS message package (a test enforces it).
"""
