"""habc_learner: ROS 2 nodes in `habc_learner.nodes`; pure logic in `habc_learner.core`.

`habc_learner.core` never imports rclpy (tests/foundation/test_pure_cores.py checks it).
"""
