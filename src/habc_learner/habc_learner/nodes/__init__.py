"""ROS 2 nodes of habc_learner (thin adapters over habc_learner.core)."""
