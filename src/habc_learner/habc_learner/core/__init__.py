"""Pure core of habc_learner: episodes, intervention-aware labeling, windowing, the dual-head
critic, HABC weights and the weighted flow-matching trainer.

Nothing in this package imports rclpy or any ROS message package (a test enforces it).
"""
