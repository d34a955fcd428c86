"""Pure core of habc_sim: the scripted expert, the scripted operator, in-process rollouts.

Nothing in this package imports rclpy, any ROS message package or the learner (a test enforces
the first two; ``tests/foundation/test_package_arrows.py`` the package arrows).
"""
