"""Pure core of arx_x5_driver: robot backends (sim, arx, metaworld), safety limits, arm
kinematics.

Nothing in this package imports rclpy or any ROS message package (a test enforces it).
"""
