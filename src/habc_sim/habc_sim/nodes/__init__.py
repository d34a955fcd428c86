"""ROS 2 node of habc_sim: the scripted operator (a thin adapter around the pure core)."""
