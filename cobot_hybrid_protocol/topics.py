"""The MQTT topic tree of the contract (``cobot/v1/...``): robot ids and reserved levels.

Robot ids are one topic level and the MQTT client id: 1-64 characters without ``/ + # $`` or
spaces. ``planners`` and ``orders`` are taken by the cloud (``cobot/v1/planners/<fleet>/...``,
``cobot/v1/orders``), so no robot may be called that: its prefix would overlap them.
"""

from __future__ import annotations

from cobot_hybrid_protocol.errors import ProtocolError

__all__ = ['RESERVED_ROBOT_IDS', 'TOPIC_ROOT', 'RobotIdError', 'check_robot_id', 'robot_prefix']

TOPIC_ROOT = 'cobot/v1'
RESERVED_ROBOT_IDS = frozenset({'planners', 'orders'})


class RobotIdError(ProtocolError, ValueError):
    """A robot id that cannot be one topic level, or is reserved."""


def check_robot_id(robot_id: object) -> str:
    """Return ``robot_id`` if it is a valid robot id; raise RobotIdError saying why not."""
    if not isinstance(robot_id, str) or not robot_id or len(robot_id) > 64 \
            or any(c in robot_id for c in '/+#$ ') or not robot_id.isprintable():
        raise RobotIdError(f'robot_id {str(robot_id)[:80]!r} must be 1-64 printable characters '
                           'without / + # $ or spaces (it is one MQTT topic level and the '
                           'client id)')
    if robot_id in RESERVED_ROBOT_IDS:
        raise RobotIdError(f"robot_id {robot_id!r} is reserved for the cloud's topics "
                           f'({TOPIC_ROOT}/{robot_id}/...): choose another')
    return robot_id


def robot_prefix(robot_id: str) -> str:
    """Return ``cobot/v1/<robot_id>`` for a valid robot id."""
    return f'{TOPIC_ROOT}/{check_robot_id(robot_id)}'
