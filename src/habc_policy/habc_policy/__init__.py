"""habc_policy: ROS 2 nodes in `habc_policy.nodes`; pure logic in `habc_policy.core`.

`habc_policy.core` never imports rclpy (tests/foundation/test_pure_cores.py checks it).
"""
