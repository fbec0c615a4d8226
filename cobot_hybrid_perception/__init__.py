"""Edge perception for cobot_hybrid: images <-> numpy, inference backends, safety (SSM).

Nothing in this package outside ``nodes/`` imports rclpy or ROS message modules.
"""
