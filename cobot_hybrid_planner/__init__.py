"""Cloud planner for cobot_hybrid: fleet state, mission planning, mission ledger.

Nothing in this package outside ``nodes/`` imports rclpy or ROS message modules.
"""
