"""The reference mission executor: order, speed scale, stalls, superseding versions, expiry."""

from __future__ import annotations

import pytest

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.mission_executor import ExecutorConfig, MissionExecutor
from cobot_hybrid_protocol.mission import (
    Mission,
    Pose,
    SchemaError,
    Task,
    progress_to_json,
    validate_progress,
)


def mission(version: int, *tasks: tuple[str, float], mission_id: str = 'm',
            issued_at: float = 0.0, valid_until: float = 1e6) -> Mission:
    return Mission(f'{mission_id}-v{version}', 'cobot-1', mission_id, version, issued_at,
                   valid_until, 'map', tuple(Task(t, 'pick', 's1', Pose(0, 0, 0, 0), d)
                                             for t, d in tasks))


def run(executor: MissionExecutor, until: float, scale: float | None, dt: float = 0.5,
        start: float = 0.0) -> list[tuple[str, str]]:
    out, now = [], start
    while now <= until + 1e-9:
        out += [(e.task_id, e.status) for e in executor.step(now, scale)]
        now += dt
    return out


def test_tasks_run_in_order_at_full_speed() -> None:
    executor = MissionExecutor()
    assert executor.accept(mission(1, ('a', 2.0), ('b', 1.0)))
    assert run(executor, 4.0, 1.0) == [('a', 'started'), ('a', 'done'), ('b', 'started'),
                                        ('b', 'done')]
    assert executor.summary()['done'] == 2


def test_speed_scale_stretches_and_a_stop_pauses_the_work() -> None:
    executor = MissionExecutor()
    executor.accept(mission(1, ('a', 2.0)))
    assert run(executor, 3.5, 0.5) == [('a', 'started')]       # 3.5 s at half speed: 1.75
    assert executor.active is not None and executor.active.fraction == pytest.approx(0.875)
    assert run(executor, 13.5, 0.0, start=4.0) == []              # stopped: no progress
    assert executor.active.fraction == pytest.approx(0.875)
    assert run(executor, 15.0, 1.0, start=14.0) == [('a', 'done')]


def test_a_task_held_at_a_stop_fails_with_the_reason() -> None:
    executor = MissionExecutor(ExecutorConfig(stall_timeout_s=5.0))
    executor.accept(mission(1, ('a', 2.0), ('b', 1.0)))
    events = []
    now = 0.0
    while now <= 6.0:
        events += executor.step(now, None)   # no speed scale at all counts as stopped
        now += 0.5
    assert [(e.task_id, e.status) for e in events] == [('a', 'started'), ('a', 'failed'),
                                                        ('b', 'started')]
    assert 'stalled' in events[1].reason
    # The planner retries it in a newer version: it runs again; done tasks do not.
    executor.accept(mission(2, ('a', 1.0)))
    executor.step(now, 1.0)
    assert executor.active is not None and executor.active.task.task_id == 'b'


def test_a_newer_version_replaces_what_has_not_started_only() -> None:
    executor = MissionExecutor()
    executor.accept(mission(1, ('a', 4.0), ('b', 1.0), ('c', 1.0)))
    assert run(executor, 1.0, 1.0) == [('a', 'started')]
    # The planner moved b away and added d; a is in progress and stays.
    assert executor.accept(mission(2, ('d', 1.0), ('c', 1.0)))
    assert not executor.accept(mission(2, ('x', 1.0)))      # same version again: ignored
    assert not executor.accept(mission(1, ('x', 1.0)))      # older: ignored
    assert run(executor, 8.0, 1.0, start=1.5) == [('a', 'done'), ('d', 'started'),
                                                   ('d', 'done'), ('c', 'started'),
                                                   ('c', 'done')]
    # A later version listing finished tasks does not run them twice.
    executor.accept(mission(3, ('c', 1.0), ('e', 0.0)))
    assert run(executor, 9.0, 1.0, start=8.5) == [('e', 'started'), ('e', 'done')]


def test_an_older_mission_does_not_replace_a_newer_one() -> None:
    executor = MissionExecutor()
    assert executor.accept(mission(1, ('a', 1.0), mission_id='new', issued_at=10.0))
    assert not executor.accept(mission(5, ('b', 1.0), mission_id='old', issued_at=5.0))


def test_no_task_of_an_expired_mission_starts() -> None:
    executor = MissionExecutor()
    executor.accept(mission(1, ('a', 1.0), ('b', 1.0), valid_until=0.9))
    assert run(executor, 5.0, 1.0) == [('a', 'started'), ('a', 'done')]
    assert [t.task_id for t in executor.pending] == ['b']


def test_progress_reports_round_trip_and_bad_ones_are_named() -> None:
    executor = MissionExecutor()
    executor.accept(mission(1, ('a', 1.0)))
    report = executor.step(0.0, 1.0)[0]
    assert validate_progress(progress_to_json(report)) == report
    bad = progress_to_json(report) | {'status': 'halfway'}
    with pytest.raises(SchemaError, match='status'):
        validate_progress(bad)
    with pytest.raises(SchemaError, match='unknown fields'):
        validate_progress(progress_to_json(report) | {'extra': 1})
    with pytest.raises(BridgeError, match='stall_timeout_s'):
        ExecutorConfig(stall_timeout_s=0)
