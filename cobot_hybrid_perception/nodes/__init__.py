"""ROS 2 node shells of the perception package (the only modules here that import rclpy)."""
