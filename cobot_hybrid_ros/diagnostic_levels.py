"""The four ``diagnostic_msgs/DiagnosticStatus`` levels by name, without importing ROS.

The pure half of :mod:`cobot_hybrid_ros.diagnostics`: cores that read diagnostics from other
sources than rclpy (the safety replay reads them from a bag) use it too.
"""

from __future__ import annotations

from typing import Any

__all__ = ['LEVEL_NAMES', 'level_name']

#: ``DiagnosticStatus.level`` numbers -> names (OK 0, WARN 1, ERROR 2, STALE 3).
LEVEL_NAMES = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}


def level_name(level: Any) -> str:
    """Return the name of a received level; one outside the four defined reads ``LEVEL_<n>``.

    rclpy holds the level as one byte (a bag reader as an int); a foreign publisher may send
    any value, which must still compare as "not OK" rather than end the callback.
    """
    number = level[0] if isinstance(level, (bytes, bytearray)) else int(level)
    return LEVEL_NAMES.get(number, f'LEVEL_{number}')
