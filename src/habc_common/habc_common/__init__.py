"""Names every habc package shares (pure Python, no rclpy): :mod:`habc_common.topics`."""
