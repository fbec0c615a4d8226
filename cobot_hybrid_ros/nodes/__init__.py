"""ROS node shells of the shared helpers (the lifecycle manager)."""
