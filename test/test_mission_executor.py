"""The mission executor's rules: goals per task, retries, stops, resumes, supersede, expiry."""

from __future__ import annotations

import math

import pytest

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.mission_executor import (
    CancelGoal,
    ExecutorConfig,
    MissionExecutor,
    SendGoal,
    result_outcome,
)
from cobot_hybrid_protocol.mission import (
    Mission,
    Pose,
    SchemaError,
    Task,
    progress_to_json,
    validate_progress,
)

SERVER = 'execute_task'


def mission(version: int, *tasks: tuple[str, float] | tuple[str, float, str],
            mission_id: str = 'm', issued_at: float = 0.0, valid_until: float = 1e6,
            robot_id: str = 'cobot-1') -> Mission:
    return Mission(f'{mission_id}-v{version}', robot_id, mission_id, version, issued_at,
                   valid_until, 'map',
                   tuple(Task(t[0], t[2] if len(t) > 2 else 'pick', 's1',  # type: ignore[misc]
                              Pose(0, 0, 0, 0), t[1]) for t in tasks))


class Cell:
    """Drives an executor: its time, the safety inputs, and its goal events."""

    def __init__(self, cfg: ExecutorConfig | None = None) -> None:
        self.ex = MissionExecutor(cfg or ExecutorConfig())
        self.ex.servers_ready({name: True for name in self.ex.cfg.servers()})
        self.now = 0.0
        self.scale: float | None = 1.0
        self.stop: bool | None = False
        self.sent: list[SendGoal] = []
        self.cancels: list[CancelGoal] = []
        self.reports: list[tuple[str, str]] = []
        self.reasons: list[str] = []

    def _take(self) -> list[SendGoal]:
        intents, reports = self.ex.take()
        new = [i for i in intents if isinstance(i, SendGoal)]
        self.sent += new
        self.cancels += [i for i in intents if isinstance(i, CancelGoal)]
        self.reports += [(r.task_id, r.status) for r in reports]
        self.reasons += [r.reason for r in reports]
        return new

    def step(self, dt: float = 0.1) -> list[SendGoal]:
        self.now += dt
        self.ex.step(self.now, self.scale, self.stop)
        return self._take()

    def run(self, seconds: float, dt: float = 0.1) -> None:
        for _ in range(round(seconds / dt)):
            self.step(dt)

    def accept(self, m: Mission) -> bool:
        ok = self.ex.accept(m, self.now)
        self._take()
        return ok

    def goal(self, within_s: float = 0.1) -> SendGoal:
        """The next goal sent, stepping at most ``within_s`` (a step by default)."""
        for _ in range(max(1, round(within_s / 0.1))):
            sent = self.step()
            if sent:
                assert len(sent) == 1, sent
                return sent[0]
        raise AssertionError(f'no goal sent: {self.reports} {self.ex.summary()}')

    def accepted(self, key: int) -> None:
        self.ex.on_accepted(key, self.now)
        self._take()

    def rejected(self, key: int) -> None:
        self.ex.on_rejected(key, self.now)
        self._take()

    def result(self, key: int, outcome: str = 'done', reason: str = '') -> None:
        self.ex.on_result(key, outcome, reason, self.now)
        self._take()

    def finish(self, outcome: str = 'done') -> SendGoal:
        """Send, accept and end the next goal."""
        goal = self.goal()
        self.accepted(goal.key)
        self.result(goal.key, outcome)
        return goal


def test_tasks_go_to_their_server_in_order_one_goal_at_a_time() -> None:
    cell = Cell()
    assert cell.accept(mission(1, ('a', 2.0), ('b', 1.0)))
    first = cell.goal()
    assert (first.server, first.task.task_id, first.mission.version) == (SERVER, 'a', 1)
    assert cell.step() == []                       # no second goal while a is not answered
    cell.accepted(first.key)
    assert cell.reports == [('a', 'started')]
    cell.run(1.0)
    assert cell.sent == [first]
    cell.result(first.key, 'done')
    cell.finish()
    assert cell.reports == [('a', 'started'), ('a', 'done'), ('b', 'started'), ('b', 'done')]
    assert cell.ex.summary()['done'] == 2 and cell.ex.summary()['goals_sent'] == 2


def test_servers_and_parameters_per_type() -> None:
    cfg = ExecutorConfig(skill_servers=('move=base/execute_task',),
                         task_parameters=('pick.gripper=soft', 'pick.force=20'))
    assert cfg.servers() == ('base/execute_task', SERVER)
    cell = Cell(cfg)
    cell.accept(mission(1, ('a', 1.0, 'pick'), ('b', 1.0, 'move')))
    a = cell.finish()
    b = cell.finish()
    assert (a.server, dict(a.parameters)) == (SERVER, {'gripper': 'soft', 'force': '20'})
    assert (b.server, dict(b.parameters)) == ('base/execute_task', {})


def test_a_type_without_a_server_fails_and_the_next_runs() -> None:
    cell = Cell(ExecutorConfig(default_server='', skill_servers=('move=base',)))
    cell.accept(mission(1, ('a', 1.0, 'pick'), ('b', 1.0, 'move')))
    assert cell.finish().task.task_id == 'b'
    assert cell.reports == [('a', 'failed'), ('b', 'started'), ('b', 'done')]
    assert cell.reasons[0].startswith("no_server: no skill server for type 'pick'")


@pytest.mark.parametrize(('settings', 'match'), [
    ({'skill_servers': ('pick',)}, 'type=action_name'),
    ({'skill_servers': ('weld=x',)}, "type 'weld'"),
    ({'skill_servers': ('pick=a', 'pick=b')}, 'given twice'),
    ({'skill_servers': ('pick=bad name',)}, 'no action name'),
    ({'default_server': '/x//y'}, 'no action name'),
    ({'task_parameters': ('pick=soft',)}, 'type.key=value'),
    ({'task_parameters': ('pick.a b=1',)}, 'key'),
    ({'task_parameters': ('pick.a=1', 'pick.a=2')}, 'given twice'),
    ({'stall_timeout_s': 0}, 'stall_timeout_s'),
    ({'max_retries': -1}, 'max_retries'),
])
def test_bad_settings_are_refused_with_the_reason(settings: dict[str, object],
                                                  match: str) -> None:
    with pytest.raises(BridgeError, match=match):
        ExecutorConfig(**settings)   # type: ignore[arg-type]


@pytest.mark.parametrize('event', ['rejected', 'failed', 'canceled', 'accept_timeout'])
def test_retries_by_policy_then_failed_with_the_cause(event: str) -> None:
    cell = Cell(ExecutorConfig(max_retries=2, retry_delay_s=0.5, accept_timeout_s=1.0))
    cell.accept(mission(1, ('a', 1.0), ('b', 1.0)))
    for attempt in range(3):
        # After the retry delay; after an accept timeout, once the unanswered goal is given
        # up too (one more accept timeout: the skill may still take it until then).
        goal = cell.goal(within_s=0.1 if attempt == 0 else
                         1.2 if event == 'accept_timeout' else 0.7)
        assert goal.task.task_id == 'a'
        if event == 'rejected':
            cell.rejected(goal.key)
        elif event == 'accept_timeout':
            cell.run(1.1)
        else:
            cell.accepted(goal.key)
            cell.result(goal.key, event, 'gripper jammed')
        if attempt < 2:
            assert cell.step() == []      # not at once: the retry delay
    cell.run(1.2 if event == 'accept_timeout' else 0.2)
    assert ('a', 'failed') in cell.reports
    cause = {'failed': 'aborted'}.get(event, event)
    assert cell.reasons[-1].startswith(f'{cause}: ') and 'attempt 3 of 3' in cell.reasons[-1]
    assert cell.ex.summary()['retries'] == 2
    assert cell.sent[-1].task.task_id == 'b' and len(cell.sent) == 4   # the next task goes on


def test_a_retry_waits_for_the_retry_delay() -> None:
    cell = Cell(ExecutorConfig(retry_delay_s=2.0))
    cell.accept(mission(1, ('a', 1.0)))
    cell.rejected(cell.goal().key)
    cell.run(1.5)
    assert len(cell.sent) == 1
    cell.run(0.6)
    assert len(cell.sent) == 2 and not cell.sent[1].resume


def test_a_late_accept_of_a_timed_out_goal_is_cancelled_and_counted() -> None:
    cell = Cell(ExecutorConfig(accept_timeout_s=1.0, retry_delay_s=2.0))
    cell.accept(mission(1, ('a', 1.0)))
    late = cell.goal()
    cell.run(1.1)                                 # no answer: one failed attempt
    cell.accepted(late.key)                       # then it is accepted after all
    assert cell.cancels[-1].key == late.key
    assert cell.ex.odd == {'accept_of_a_goal_given_up': 1}
    cell.run(3.0)
    assert len(cell.sent) == 1                    # nothing new while it is being cancelled
    cell.result(late.key, 'canceled')             # its end is expected, not odd
    assert cell.goal().task.task_id == 'a'
    assert cell.ex.odd == {'accept_of_a_goal_given_up': 1}


def test_a_goal_that_outruns_its_execution_timeout_is_cancelled_and_retried() -> None:
    cfg = ExecutorConfig(timeout_factor=2.0, timeout_margin_s=1.0, retry_delay_s=0.0,
                         max_retries=0)
    cell = Cell(cfg)
    cell.accept(mission(1, ('a', 2.0)))
    goal = cell.goal()
    cell.accepted(goal.key)
    cell.scale = 0.5                              # work at the speed scale: 10 s is 5 s
    cell.run(9.0)
    assert cell.cancels == []
    cell.run(1.5)
    assert cell.cancels[-1].key == goal.key and 'execution timeout' in cell.cancels[-1].reason
    cell.result(goal.key, 'canceled')
    assert cell.reports == [('a', 'started'), ('a', 'failed')]
    assert cell.reasons[-1].startswith('timeout: execution timeout')


@pytest.mark.parametrize('stop', ['scale_zero', 'protective_stop', 'no_scale', 'nan_scale'])
def test_a_stop_cancels_the_running_goal_and_the_clear_resumes_it(stop: str) -> None:
    cell = Cell()
    cell.accept(mission(1, ('a', 10.0), ('b', 1.0)))
    goal = cell.goal()
    cell.accepted(goal.key)
    cell.run(1.0)
    if stop == 'protective_stop':
        cell.stop = True
    else:
        cell.scale = {'scale_zero': 0.0, 'no_scale': None, 'nan_scale': math.nan}[stop]
    cell.step()
    assert [c.key for c in cell.cancels] == [goal.key]
    assert cell.ex.health(0) == ('OK', 'running a (held: stopped)')
    cell.result(goal.key, 'canceled', 'cancel requested')
    cell.run(5.0)
    assert len(cell.sent) == 1                     # nothing is sent while stopped
    cell.scale, cell.stop = 1.0, False
    resumed = cell.goal()
    assert resumed.task.task_id == 'a' and resumed.resume and resumed.key != goal.key
    cell.accepted(resumed.key)
    cell.result(resumed.key, 'done')
    assert cell.reports == [('a', 'started'), ('a', 'done')]   # one started, no failure
    assert cell.ex.summary()['resumes'] == 1 and cell.ex.summary()['retries'] == 0


def test_the_resume_waits_until_the_cancelled_goal_has_ended() -> None:
    cell = Cell(ExecutorConfig(cancel_timeout_s=3.0))
    cell.accept(mission(1, ('a', 10.0)))
    goal = cell.goal()
    cell.accepted(goal.key)
    cell.scale = 0.0
    cell.step()
    cell.scale = 1.0
    cell.run(2.0)
    assert len(cell.sent) == 1                     # the cancelled goal has not ended yet
    cell.run(1.1)                                  # the skill never answers the cancel
    assert cell.ex.summary()['cancel_timeouts'] == 1
    assert len(cell.sent) == 2 and cell.sent[-1].resume


def test_a_goal_finished_while_its_cancel_was_on_the_way_is_done() -> None:
    cell = Cell()
    cell.accept(mission(1, ('a', 1.0)))
    goal = cell.goal()
    cell.accepted(goal.key)
    cell.stop = True
    cell.step()
    cell.result(goal.key, 'done')
    cell.stop = False
    cell.run(1.0)
    assert cell.reports == [('a', 'started'), ('a', 'done')] and len(cell.sent) == 1


def test_a_goal_accepted_during_a_stop_is_cancelled_at_once() -> None:
    cell = Cell()
    cell.accept(mission(1, ('a', 5.0)))
    goal = cell.goal()
    cell.scale = 0.0
    cell.step()
    assert cell.cancels == []                       # nothing to cancel before the accept
    cell.accepted(goal.key)
    assert cell.cancels[-1].key == goal.key and cell.reports == [('a', 'started')]


def test_no_task_starts_while_stopped_and_the_one_held_fails_after_the_stall_timeout() -> None:
    cell = Cell(ExecutorConfig(stall_timeout_s=5.0))
    cell.scale = None                               # no safety monitor
    cell.accept(mission(1, ('a', 1.0), ('b', 1.0)))
    cell.run(20.0)
    assert cell.sent == [] and cell.reports == []   # nothing starts, so nothing stalls
    cell.scale = 1.0
    goal = cell.goal()
    cell.accepted(goal.key)
    cell.scale = 0.0
    cell.step()
    cell.result(goal.key, 'canceled')
    cell.run(5.0)
    assert cell.reports == [('a', 'started'), ('a', 'failed')]
    assert cell.reasons[-1].startswith('stalled: stopped for 5 s')
    cell.scale = 1.0
    assert cell.goal().task.task_id == 'b' and not cell.sent[-1].resume


def test_a_version_without_the_running_task_cancels_it_and_reports_superseded() -> None:
    cell = Cell()
    cell.accept(mission(1, ('a', 10.0), ('b', 1.0), ('c', 1.0)))
    goal = cell.goal()
    cell.accepted(goal.key)
    assert cell.accept(mission(2, ('c', 1.0), ('d', 1.0)))   # the planner moved a and b away
    assert [c.key for c in cell.cancels] == [goal.key]
    assert cell.step() == []                        # nothing new until the goal has ended
    cell.result(goal.key, 'canceled')
    assert cell.reports == [('a', 'started'), ('a', 'failed')]
    assert cell.reasons[-1] == 'superseded: mission m v2 no longer lists the task'
    assert [cell.finish().task.task_id, cell.finish().task.task_id] == ['c', 'd']
    assert all(g.mission.version == 2 for g in cell.sent[1:])


def test_a_version_that_keeps_the_running_task_lets_it_run_and_replaces_the_rest() -> None:
    cell = Cell()
    cell.accept(mission(1, ('a', 4.0), ('b', 1.0), ('c', 1.0)))
    goal = cell.goal()
    cell.accepted(goal.key)
    assert cell.accept(mission(2, ('a', 4.0), ('d', 1.0), ('c', 1.0)))
    assert not cell.accept(mission(2, ('x', 1.0)))          # same version again: ignored
    assert not cell.accept(mission(1, ('x', 1.0)))          # older: ignored
    assert cell.cancels == []
    cell.result(goal.key, 'done')
    assert [cell.finish().task.task_id for _ in range(2)] == ['d', 'c']
    assert cell.reports[:2] == [('a', 'started'), ('a', 'done')]
    assert [r.version for r in [goal.mission]] == [1]       # a reports under its version
    # A later version listing finished tasks does not run them twice.
    cell.accept(mission(3, ('c', 1.0), ('e', 0.0)))
    assert cell.finish().task.task_id == 'e'
    assert cell.step() == []


def test_a_superseded_goal_not_yet_accepted_is_dropped_and_a_late_accept_cancelled() -> None:
    cell = Cell()
    cell.accept(mission(1, ('a', 1.0), ('b', 1.0)))
    goal = cell.goal()
    cell.accept(mission(2, ('b', 1.0)))
    assert cell.reports == []                        # a never started: nothing to report
    cell.accepted(goal.key)
    assert cell.cancels[-1].key == goal.key and cell.reports == []
    cell.result(goal.key, 'canceled')
    assert cell.finish().task.task_id == 'b'


def test_a_failed_task_runs_again_when_a_newer_version_lists_it() -> None:
    cell = Cell(ExecutorConfig(max_retries=0))
    cell.accept(mission(1, ('a', 1.0)))
    cell.finish('failed')
    cell.run(1.0)
    assert cell.reports == [('a', 'started'), ('a', 'failed')]
    cell.accept(mission(2, ('a', 1.0)))
    assert cell.finish().task.task_id == 'a'
    assert cell.reports[-1] == ('a', 'done')


def test_an_older_mission_does_not_replace_a_newer_one() -> None:
    cell = Cell()
    assert cell.accept(mission(1, ('a', 1.0), mission_id='new', issued_at=10.0))
    assert not cell.accept(mission(5, ('b', 1.0), mission_id='old', issued_at=5.0))


def test_no_goal_is_sent_for_an_expired_mission() -> None:
    cell = Cell(ExecutorConfig(max_retries=3, retry_delay_s=0.0))
    cell.accept(mission(1, ('a', 1.0), ('b', 1.0), ('c', 1.0), valid_until=2.0))
    cell.finish()                                    # a runs
    goal = cell.goal()                               # b is accepted and runs past expiry...
    cell.accepted(goal.key)
    cell.run(2.0)
    cell.result(goal.key, 'failed')                  # ...and fails: no retry after expiry
    cell.run(2.0)
    assert cell.reports == [('a', 'started'), ('a', 'done'), ('b', 'started'),
                            ('b', 'failed')]
    assert cell.reasons[-1].startswith('expired')
    assert [t.task_id for t in cell.ex.pending] == ['c'] and len(cell.sent) == 2


def test_the_robot_id_is_the_bridges_check_not_the_executors() -> None:
    cell = Cell()
    assert cell.accept(mission(1, ('a', 1.0), robot_id='another-robot'))
    assert cell.finish().mission.robot_id == 'another-robot'


def test_a_server_that_is_not_up_holds_the_task_then_fails_it() -> None:
    cell = Cell(ExecutorConfig(server_timeout_s=3.0))
    cell.ex.servers_ready({SERVER: False})
    cell.accept(mission(1, ('a', 1.0), ('b', 1.0)))
    cell.run(2.0)
    assert cell.sent == []
    cell.ex.servers_ready({SERVER: True})            # it came up in time: a goes
    assert cell.finish().task.task_id == 'a'
    cell.ex.servers_ready({SERVER: False})
    cell.run(3.1)
    assert cell.reports[-1] == ('b', 'failed') and cell.reasons[-1].startswith('no_server')


@pytest.mark.parametrize('event', ['result', 'duplicate', 'feedback', 'rejected'])
def test_events_of_goals_that_are_not_current_are_counted_and_ignored(event: str) -> None:
    cell = Cell()
    cell.accept(mission(1, ('a', 5.0), ('b', 1.0)))
    goal = cell.goal()
    cell.accepted(goal.key)
    if event == 'result':
        cell.result(goal.key + 100, 'done')
    elif event == 'duplicate':
        cell.result(goal.key, 'done')
        cell.result(goal.key, 'done')
    elif event == 'feedback':
        cell.ex.on_feedback(goal.key + 100, 0.5, 'running')
    else:
        cell.rejected(goal.key)                      # already accepted
    assert sum(cell.ex.odd.values()) == 1, cell.ex.odd
    expected = [('a', 'started'), ('a', 'done')] if event == 'duplicate' else [('a', 'started')]
    assert cell.reports == expected


def test_hostile_feedback_is_clamped_and_a_nan_speed_scale_stops() -> None:
    cell = Cell()
    cell.accept(mission(1, ('a', 5.0)))
    goal = cell.goal()
    cell.accepted(goal.key)
    cell.ex.on_feedback(goal.key, math.nan, 'x' * 1000)
    cell.ex.on_feedback(goal.key, 7.0, 'running')
    assert cell.ex.summary()['goal_progress'] == 1.0
    for scale in (math.inf, -1.0, math.nan):       # each is a stop
        cell.scale = scale
        cell.step()
        assert cell.ex.stopped, scale
    assert cell.ex.odd == {}


@pytest.mark.parametrize(('status', 'outcome', 'expected'), [
    ('succeeded', 'done', 'done'), ('succeeded', '', 'done'), ('aborted', '', 'failed'),
    ('canceled', '', 'canceled'), ('succeeded', 'finished!', 'failed'),
    ('unknown', '', 'failed'), ('aborted', 'failed', 'failed')])
def test_result_outcome(status: str, outcome: str, expected: str) -> None:
    assert result_outcome(status, outcome) == expected


def test_progress_reports_round_trip_and_bad_ones_are_named() -> None:
    cell = Cell()
    cell.accept(mission(1, ('a', 1.0)))
    cell.accepted(cell.goal().key)
    intents, reports = cell.ex.take()
    assert intents == [] and reports == []           # taken already
    ex = MissionExecutor()
    ex.servers_ready({SERVER: True})
    ex.accept(mission(1, ('a', 1.0)), 0.0)
    ex.step(0.0, 1.0)
    (send,), _ = ex.take()
    assert isinstance(send, SendGoal)
    ex.on_accepted(send.key, 1.0)
    _, (report,) = ex.take()
    assert validate_progress(progress_to_json(report)) == report
    bad = progress_to_json(report) | {'status': 'halfway'}
    with pytest.raises(SchemaError, match='status'):
        validate_progress(bad)
    with pytest.raises(SchemaError, match='unknown fields'):
        validate_progress(progress_to_json(report) | {'extra': 1})


def test_no_retry_goes_out_while_a_timed_out_goal_may_still_be_accepted() -> None:
    # A skill slow to answer must never end up with the retry and the late goal at once.
    cell = Cell(ExecutorConfig(accept_timeout_s=1.0, retry_delay_s=0.5))
    cell.accept(mission(1, ('a', 1.0)))
    late = cell.goal()
    cell.run(1.1)                                 # no answer: one failed attempt
    cell.run(0.7)                                 # past the retry delay
    assert len(cell.sent) == 1                    # held: the first may still be accepted
    cell.accepted(late.key)                       # it is: cancelled, still nothing new
    assert cell.cancels[-1].key == late.key and len(cell.sent) == 1
    cell.result(late.key, 'canceled')
    assert cell.goal(within_s=1.0).task.task_id == 'a'


def test_a_timed_out_goal_never_answered_at_all_frees_the_skill_after_a_second_timeout() -> None:
    cell = Cell(ExecutorConfig(accept_timeout_s=1.0, retry_delay_s=0.1))
    cell.accept(mission(1, ('a', 1.0)))
    cell.goal()
    cell.run(1.1)
    assert cell.goal(within_s=1.5).task.task_id == 'a'   # the retry, once it is given up
    assert cell.ex.counts.get('abandoned_unanswered') == 1


def test_a_superseded_unanswered_goal_holds_the_next_task_until_its_answer() -> None:
    cell = Cell()
    cell.accept(mission(1, ('a', 1.0), ('b', 1.0)))
    dropped = cell.goal()
    cell.accept(mission(2, ('b', 1.0)))
    cell.run(0.5)
    assert len(cell.sent) == 1                    # b waits: the skill may still take a
    cell.rejected(dropped.key)                    # refused after all: nothing runs
    assert cell.goal().task.task_id == 'b'
    assert cell.ex.odd == {}


def test_a_mission_expired_on_arrival_changes_nothing() -> None:
    cell = Cell()
    cell.accept(mission(1, ('a', 5.0)))
    running = cell.goal()
    cell.accepted(running.key)
    cell.now = 100.0
    assert not cell.accept(mission(2, ('b', 1.0), valid_until=50.0))
    assert cell.cancels == [] and cell.ex.counts.get('missions_expired_on_arrival') == 1
    cell.result(running.key)
    assert ('a', 'done') in cell.reports
