"""The one diagnostics builder: level names to bytes, values to KeyValues, the node's stamp."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.clock import Clock
from rclpy.clock_type import ClockType
from rclpy.time import Time

from cobot_hybrid_ros.diagnostics import (
    LEVELS,
    diagnostic_array,
    diagnostic_value,
    level_byte,
    level_name,
)


class FixedClock(Clock):
    """A clock that always reads the same instant."""

    _fixed: int

    def __new__(cls, nanoseconds: int) -> FixedClock:   # rclpy builds clocks in __new__
        clock = cast(FixedClock, super().__new__(cls, clock_type=ClockType.SYSTEM_TIME))
        clock._fixed = nanoseconds
        return clock

    def now(self) -> Time:
        return Time(nanoseconds=self._fixed, clock_type=self.clock_type)


@pytest.mark.parametrize(('name', 'byte'), [
    ('OK', DiagnosticStatus.OK), ('WARN', DiagnosticStatus.WARN),
    ('ERROR', DiagnosticStatus.ERROR), ('STALE', DiagnosticStatus.STALE)])
def test_level_names_map_to_the_status_bytes_and_back(name: str, byte: bytes) -> None:
    assert level_byte(name) == byte
    assert level_name(byte) == name
    assert level_name(byte[0]) == name


@pytest.mark.parametrize('name', ['ok', 'WARNING', 'FATAL', '', 'LEVEL_7'])
def test_an_unknown_level_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match='OK, WARN, ERROR, STALE'):
        level_byte(name)


@pytest.mark.parametrize(('level', 'name'), [(b'\x04', 'LEVEL_4'), (255, 'LEVEL_255')])
def test_a_foreign_level_keeps_its_number(level: bytes | int, name: str) -> None:
    assert level_name(level) == name
    assert name not in LEVELS


@pytest.mark.parametrize(('value', 'text'), [
    ('ok', 'ok'), (3, '3'), (0.25, '0.25'), (True, 'True'), (None, 'None'),
    ({'ttl': 2, 'full': 1}, '{"ttl": 2, "full": 1}'), ({}, '{}'),
    (['a', 'b'], '["a", "b"]'), (('a', 1), '["a", 1]'),
])
def test_values_are_text_with_dicts_and_lists_as_json(value: Any, text: str) -> None:
    assert diagnostic_value(value) == text


def test_the_array_holds_one_status_stamped_by_the_clock() -> None:
    msg = diagnostic_array(FixedClock(12_500_000_001), 'bridge_node: link', 'WARN',
                           'offline', {'backlog_messages': 4, 'dropped': {'ttl': 1},
                                       'connected': False}, hardware_id='cobot-1')
    assert isinstance(msg, DiagnosticArray)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 500_000_001)
    [status] = msg.status
    assert status.level == DiagnosticStatus.WARN
    assert (status.name, status.message, status.hardware_id) == \
        ('bridge_node: link', 'offline', 'cobot-1')
    assert [(kv.key, kv.value) for kv in status.values] == [
        ('backlog_messages', '4'), ('dropped', '{"ttl": 1}'), ('connected', 'False')]
    assert json.loads(status.values[1].value) == {'ttl': 1}


def test_without_values_or_hardware_id() -> None:
    msg = diagnostic_array(FixedClock(0), 'planner_node: fleet', 'OK', '0 missions')
    [status] = msg.status
    assert status.level == DiagnosticStatus.OK and list(status.values) == []
    assert status.hardware_id == ''


def test_a_bad_level_builds_nothing() -> None:
    with pytest.raises(ValueError):
        diagnostic_array(FixedClock(0), 'x', 'FATAL', 'no such level')


def test_a_real_clock_stamps_now() -> None:
    before = Clock().now().nanoseconds
    msg = diagnostic_array(Clock(), 'x', 'OK', 'ok')
    stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
    assert before <= stamp <= Clock().now().nanoseconds
