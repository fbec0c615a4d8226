"""Which routed ROS messages become CRDT telemetry state, and the bridge's link health."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cobot_hybrid_bridge.robot_state import StateUpdate, link_health, state_update

BOOL, FLOAT = 'std_msgs/msg/Bool', 'std_msgs/msg/Float64'


@pytest.mark.parametrize(('topic', 'data', 'stopped'), [
    ('protective_stop', {'data': True}, True),
    ('/cell1/robot2/protective_stop', {'data': True}, True),
    ('protective_stop', {'data': False}, False),
    ('protective_stop', {}, False),                      # no field: not stopped
])
def test_a_protective_stop_sets_the_alarm_and_the_value(topic: str, data: dict[str, Any],
                                                        stopped: bool) -> None:
    update = state_update(BOOL, topic, data)
    assert update.alarms == {'protective_stop': stopped}
    assert update.values == {'protective_stop': stopped}
    assert update


@pytest.mark.parametrize(('value', 'kept'), [
    (0.123456, 0.123), (1.0, 1.0), (0.0, 0.0), (0.9995, 1.0),
])
def test_speed_scale_is_kept_rounded_to_three_decimals(value: float, kept: float) -> None:
    update = state_update(FLOAT, '/robot/speed_scale', {'data': value})
    assert update.values == {'speed_scale': kept} and update.alarms == {}


@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf, 1, '0.5', None, True])
def test_a_speed_scale_that_is_not_a_finite_float_is_ignored(value: Any) -> None:
    update = state_update(FLOAT, 'speed_scale', {'data': value})
    assert update == StateUpdate() and not update


@pytest.mark.parametrize(('type_name', 'topic'), [
    (FLOAT, 'protective_stop'),               # the wrong type on the right topic
    (BOOL, 'speed_scale'),
    (BOOL, 'protective_stop/status'),         # the topic must end with the name
    (BOOL, 'door_protective_stop'),           # ... as its whole last level
    (FLOAT, '/arm/max_speed_scale'),
    ('std_msgs/msg/String', 'protective_stop'),
    (BOOL, 'gripper_closed'),
    ('vision_msgs/msg/Detection2DArray', 'detections'),
])
def test_other_messages_leave_the_state_alone(type_name: str, topic: str) -> None:
    assert not state_update(type_name, topic, {'data': True})


def test_a_message_without_a_dict_changes_nothing() -> None:
    assert not state_update(BOOL, 'protective_stop', None)   # a CDR-only route


def _stats(**overrides: Any) -> dict[str, Any]:
    stats = {'connected': True, 'disk_full_errors': 0, 'balanced': True,
             'backlog_messages': 0, 'last_error': ''}
    stats.update(overrides)
    return stats


@pytest.mark.parametrize(('overrides', 'level', 'message'), [
    ({}, 'OK', 'connected'),
    ({'connected': False, 'backlog_messages': 42, 'last_error': 'connection refused'},
     'WARN', 'offline, queueing: 42 messages (connection refused)'),
    ({'disk_full_errors': 1}, 'ERROR', 'connected'),
    ({'balanced': False}, 'ERROR', 'connected'),
    ({'connected': False, 'balanced': False, 'backlog_messages': 3, 'last_error': 'x'},
     'ERROR', 'offline, queueing: 3 messages (x)'),
])
def test_link_health(overrides: dict[str, Any], level: str, message: str) -> None:
    assert link_health(_stats(**overrides)) == (level, message)
