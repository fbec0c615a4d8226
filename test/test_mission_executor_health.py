"""The mission executor's health and the freshness of the speed scale it runs at."""

from __future__ import annotations

import pytest

from cobot_hybrid_bridge.mission_executor import (
    ExecutorConfig,
    MissionExecutor,
    SendGoal,
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


def _running(executor: MissionExecutor, now: float = 0.0) -> int:
    """Send and accept the next goal; return its key."""
    executor.step(now, 1.0)
    intents, _ = executor.take()
    (goal,) = intents
    assert isinstance(goal, SendGoal)
    executor.on_accepted(goal.key, now)
    executor.take()
    return goal.key


def _ready(cfg: ExecutorConfig | None = None) -> MissionExecutor:
    executor = MissionExecutor(cfg or ExecutorConfig())
    executor.servers_ready({'execute_task': True})
    return executor


def test_idle_executor_is_ok() -> None:
    executor = MissionExecutor()
    assert executor.health(rejected=0) == ('OK', 'idle')
    assert executor.diagnostic_values(0) == {
        'mission': '', 'active': '', 'goal': '', 'goal_progress': '0.0', 'stopped': 'True',
        'pending': '0', 'done': '0', 'failed': '0', 'goals_sent': '0', 'retries': '0',
        'resumes': '0', 'cancels': '0', 'cancel_timeouts': '0', 'odd_events': '0',
        'missions_rejected': '0'}


def test_a_rejected_mission_warns() -> None:
    assert MissionExecutor().health(rejected=1) == ('WARN', 'idle')


def test_running_task_and_its_feedback_are_named() -> None:
    executor = _ready()
    executor.accept(_mission(('a', 4.0), ('b', 1.0)), 0.0)
    key = _running(executor)
    executor.on_feedback(key, 0.25, 'running')
    assert executor.health(0) == ('OK', 'running a')
    values = executor.diagnostic_values(2)
    assert values['mission'] == 'm v1' and values['goal_progress'] == '0.25'
    assert values['goal'] == 'running' and values['goals_sent'] == '1'
    assert values['pending'] == '1' and values['missions_rejected'] == '2'
    assert list(values)[-1] == 'missions_rejected'


def test_odd_events_are_shown_by_reason() -> None:
    executor = _ready()
    executor.on_result(99, 'done', '', 0.0)
    executor.on_result(98, 'done', '', 0.0)
    values = executor.diagnostic_values(0)
    assert values['odd_events'] == '2' and values['odd_result_of_an_unknown_goal'] == '2'


def test_a_failed_task_warns_until_it_is_forgotten() -> None:
    executor = _ready(ExecutorConfig(max_remembered=1, max_retries=0))
    executor.accept(_mission(('a', 4.0), ('b', 1.0)), 0.0)
    key = _running(executor)
    executor.on_result(key, 'failed', 'gripper jammed', 1.0)
    _, reports = executor.take()
    assert [(r.task_id, r.status) for r in reports] == [('a', 'failed')]
    key = _running(executor, 2.0)
    assert executor.health(0) == ('WARN', 'running b')
    assert executor.diagnostic_values(0)['failed'] == '1'
    executor.on_result(key, 'done', '', 3.0)     # b done; only one finished task is kept
    assert executor.health(0) == ('OK', 'idle')
