"""The mission executor's health and the freshness of the speed scale it runs at."""

from __future__ import annotations

import pytest

from cobot_hybrid_bridge.mission_executor import (
    ExecutorConfig,
    MissionExecutor,
    fresh_speed_scale,
)
from cobot_hybrid_protocol.mission import Mission, Pose, Task


def _mission(*tasks: tuple[str, float]) -> Mission:
    return Mission('m-v1', 'cobot-1', 'm', 1, 0.0, 1e6, 'map',
                   tuple(Task(t, 'pick', 's1', Pose(0, 0, 0, 0), d) for t, d in tasks))


@pytest.mark.parametrize(('sample', 'now', 'scale'), [
    (None, 5.0, None),
    ((0.5, 4.0), 5.0, 0.5),        # exactly the timeout old: still fresh
    ((0.5, 4.5), 5.0, 0.5),
    ((0.5, 3.99), 5.0, None),      # older than the timeout: none
    ((0.0, 5.0), 5.0, 0.0),        # a fresh stop is a scale, not "none"
])
def test_fresh_speed_scale(sample: tuple[float, float] | None, now: float,
                           scale: float | None) -> None:
    assert fresh_speed_scale(sample, now, timeout_s=1.0) == scale


def test_idle_executor_is_ok() -> None:
    executor = MissionExecutor()
    assert executor.health(rejected=0) == ('OK', 'idle')
    assert executor.diagnostic_values(0) == {
        'mission': '', 'active': '', 'active_fraction': '0.0', 'pending': '0', 'done': '0',
        'failed': '0', 'missions_rejected': '0'}


def test_a_rejected_mission_warns() -> None:
    assert MissionExecutor().health(rejected=1) == ('WARN', 'idle')


def test_running_task_is_named() -> None:
    executor = MissionExecutor()
    executor.accept(_mission(('a', 4.0), ('b', 1.0)))
    executor.step(0.0, 1.0)
    executor.step(1.0, 1.0)
    assert executor.health(0) == ('OK', 'running a')
    values = executor.diagnostic_values(2)
    assert values['mission'] == 'm v1' and values['active_fraction'] == '0.25'
    assert values['pending'] == '1' and values['missions_rejected'] == '2'
    assert list(values)[-1] == 'missions_rejected'


def test_a_failed_task_warns_until_it_is_forgotten() -> None:
    executor = MissionExecutor(ExecutorConfig(max_remembered=1))
    executor.accept(_mission(('a', 4.0), ('b', 1.0)))
    executor.step(0.0, 0.0)
    stalled = executor.cfg.stall_timeout_s + 1.0
    executor.step(stalled, 0.0)                   # held at scale 0: a failed, b started
    assert executor.health(0) == ('WARN', 'running b')
    assert executor.diagnostic_values(0)['failed'] == '1'
    executor.step(stalled + 2.0, 1.0)             # b done; only one finished task is kept
    assert executor.health(0) == ('OK', 'idle')
