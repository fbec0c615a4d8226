"""Edge bridge for cobot_hybrid: durable queue, MQTT link, codecs, filters, command security.

Nothing in this package outside ``nodes/`` imports rclpy or ROS message modules.
"""
