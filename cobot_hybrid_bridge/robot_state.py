"""Which robot state the bridge keeps in its CRDT telemetry, and how healthy its link is.

Pure data, no ROS: ``bridge_node`` passes each routed message as (ROS type, ROS topic, the
message as a dict) and applies the :class:`StateUpdate` with ``EdgeBridge.set_alarm`` /
``EdgeBridge.set_value``.

* a ``std_msgs/msg/Bool`` on a topic ending in ``protective_stop`` raises or clears the
  ``protective_stop`` alarm and sets the ``protective_stop`` value;
* a ``std_msgs/msg/Float64`` on a topic ending in ``speed_scale`` sets the ``speed_scale``
  value, rounded to 3 decimals, when it is a finite float (anything else is ignored);
* every other message leaves the state alone.

:func:`link_health` gives the level and message of the bridge's diagnostics from its stats:
OK while connected, WARN while offline (queueing), ERROR on a disk-full error or an
unbalanced queue (committed != delivered + queued + dropped), whatever the link.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ['SPEED_SCALE_DECIMALS', 'StateUpdate', 'link_health', 'state_update']

BOOL_TYPE = 'std_msgs/msg/Bool'
FLOAT64_TYPE = 'std_msgs/msg/Float64'
PROTECTIVE_STOP = 'protective_stop'
SPEED_SCALE = 'speed_scale'
SPEED_SCALE_DECIMALS = 3


@dataclass(frozen=True)
class StateUpdate:
    """Alarms to raise (True) or clear (False), then last-known values to set."""

    alarms: dict[str, bool] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.alarms or self.values)


def _named(ros_topic: str, name: str) -> bool:
    """Whether the topic's last level is ``name`` (not ``/cell/door_protective_stop``)."""
    return ros_topic == name or ros_topic.endswith('/' + name)


def state_update(type_name: str, ros_topic: str, data: Mapping[str, Any] | None) -> StateUpdate:
    """Return what one routed message changes in the telemetry state (empty: nothing)."""
    if data is None:
        return StateUpdate()
    if type_name == BOOL_TYPE and _named(ros_topic, PROTECTIVE_STOP):
        stopped = bool(data.get('data'))
        return StateUpdate(alarms={PROTECTIVE_STOP: stopped}, values={PROTECTIVE_STOP: stopped})
    if type_name == FLOAT64_TYPE and _named(ros_topic, SPEED_SCALE):
        value = data.get('data')
        if isinstance(value, float) and math.isfinite(value):
            return StateUpdate(values={SPEED_SCALE: round(value, SPEED_SCALE_DECIMALS)})
    return StateUpdate()


def link_health(stats: Mapping[str, Any]) -> tuple[str, str]:
    """Return (level name, message) of the bridge's diagnostics from ``EdgeBridge.stats()``."""
    level = 'OK' if stats['connected'] else 'WARN'
    if stats['disk_full_errors'] or not stats['balanced']:
        level = 'ERROR'
    message = 'connected' if stats['connected'] else (
        f'offline, queueing: {stats["backlog_messages"]} messages ({stats["last_error"]})')
    return level, message
