"""arx_x5_driver: ROS 2 nodes in `arx_x5_driver.nodes`; pure logic in `arx_x5_driver.core`.

`arx_x5_driver.core` never imports rclpy (tests/foundation/test_pure_cores.py checks it).
"""
