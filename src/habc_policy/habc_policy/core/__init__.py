"""Pure core of habc_policy: policy model, chunk scheduling, authority arbitration.

Nothing in this package imports rclpy or any ROS message package (a test enforces it).
"""
