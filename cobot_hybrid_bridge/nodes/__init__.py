"""ROS 2 node shells of the bridge package (the only modules here that import rclpy)."""
