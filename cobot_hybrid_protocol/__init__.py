"""The robot-cloud contract of cobot_hybrid, pure Python (no rclpy, no paho).

Both sides import it and nothing of ours is imported here. Today it holds the bounded parsers
every boundary uses (:mod:`.limits`) and the error tree (:mod:`.errors`).
"""
