"""ROS 2 node shells of the planner package (the only modules here that import rclpy)."""
