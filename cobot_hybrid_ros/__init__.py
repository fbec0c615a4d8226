"""Node helpers shared by every ``nodes/`` shell of cobot_hybrid.

``params`` (ROS parameters from a config dataclass's field specs), ``runner`` (the ``main()``
of every node), ``diagnostics`` (one way to publish a ``DiagnosticArray``), ``images``
(``sensor_msgs`` images <-> numpy) import rclpy and are for ``nodes/`` only. ``image_codec``
is the pure part of the image helpers (buffers <-> numpy, colour, JPEG/PNG; no ROS import),
which perception's cores use too.
"""
