"""One way for every node to publish its health: a ``diagnostic_msgs/DiagnosticArray``.

Cores say a node's health in plain data (a level name, a message, ``str -> str`` values);
:func:`diagnostic_array` turns that into the message, stamped with the node's clock, so no
node builds ``DiagnosticStatus`` / ``KeyValue`` by hand and every node encodes levels and
values the same way. :func:`level_name` reads a received level back as a name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock

from cobot_hybrid_ros.diagnostic_levels import level_name

__all__ = ['LEVELS', 'diagnostic_array', 'diagnostic_value', 'level_byte', 'level_name']

#: The four levels of ``diagnostic_msgs/DiagnosticStatus``, by the names cores use.
LEVELS: dict[str, bytes] = {'OK': DiagnosticStatus.OK, 'WARN': DiagnosticStatus.WARN,
                            'ERROR': DiagnosticStatus.ERROR, 'STALE': DiagnosticStatus.STALE}


def level_byte(name: str) -> bytes:
    """Return the ``DiagnosticStatus.level`` byte of a level name (OK, WARN, ERROR, STALE)."""
    try:
        return LEVELS[name]
    except KeyError:
        raise ValueError(f'unknown diagnostic level {name!r}; use one of '
                         f'{", ".join(LEVELS)}') from None


def diagnostic_value(value: object) -> str:
    """Return a ``KeyValue`` value: dicts and lists as JSON, anything else as ``str()``."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


def diagnostic_array(clock: Clock, name: str, level: str, message: str,
                     values: Mapping[str, object] | None = None,
                     hardware_id: str = '') -> DiagnosticArray:
    """Return a ``DiagnosticArray`` of one status, its header stamped now on ``clock``."""
    status = DiagnosticStatus(
        level=level_byte(level), name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=key, value=diagnostic_value(value))
                for key, value in (values or {}).items()])
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = clock.now().to_msg()
    return msg
