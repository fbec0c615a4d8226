"""Robot side of a mission: drive each task through a skill action, as the safety monitor allows.

Pure Python, no ROS. :class:`MissionExecutor` is the state machine ``mission_executor_node``
runs: it is fed missions, the safety monitor's speed scale and protective stop, the time and
the events of the goals it sent (accepted, rejected, feedback, result), and answers with
intents (:class:`SendGoal`, :class:`CancelGoal`) and :class:`TaskProgress` reports (``started``,
``done``, ``failed``), collected by :meth:`MissionExecutor.take`. The node turns the intents
into ``ExecuteTask`` action calls; every rule lives here (docs/skills.md has the whole story).

Missions:

* a newer version of the mission (or a newer mission) replaces the tasks that have not
  started; a task done is never run twice, a failed one only when a newer version lists it
  again (the planner retries it);
* a task has *started* once its skill accepted a goal of it; from then on it ends ``done`` or
  ``failed``, never silently;
* a newer version that no longer lists the running task cancels its goal; the task is then
  reported ``failed`` with reason ``superseded: ...`` (the planner reopens a failed task and
  may give it to another robot), or ``done`` if the skill finished it before the cancel took;
* no goal is sent for an expired mission (``valid_until`` passed): no task starts, and the task
  in hand is neither resumed nor retried (it fails ``expired``); a goal already running at
  ``valid_until`` runs to its end.

Safety: the robot is *stopped* when the speed scale is 0, missing, not finite or older than
``speed_timeout_s`` (:func:`fresh_speed_scale`), or the protective stop is true. While stopped
no goal is sent and the running goal is cancelled; once the stop clears (and the cancelled goal
has ended, ``cancel_timeout_s`` at most) the same task's goal is sent again: a *resume*, not a
retry. A task held stopped for ``stall_timeout_s`` fails ``stalled``.

Retries: a rejected goal, one not answered within ``accept_timeout_s``, a result ``failed`` (or
``canceled`` by the skill itself) and a goal that outran its execution timeout
(``duration_s * timeout_factor + timeout_margin_s`` of work at the speed scale) each use one
attempt; after ``max_retries`` retries the task fails with that cause. No new goal is sent while
a cancelled one has not ended, so a skill never sees two goals of this executor at once.

Goal events that do not fit (a result of a goal that is not current, a duplicate, an accept of
a goal given up on, which is answered with a cancel) are counted by reason and ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_protocol.mission import TASK_TYPES, Mission, Task, TaskProgress
from cobot_hybrid_protocol.settings import check_settings, setting

__all__ = ['ActiveTask', 'CancelGoal', 'ExecutorConfig', 'Intent', 'MissionExecutor',
           'SendGoal', 'fresh_speed_scale', 'result_outcome']

#: A ROS action name as the settings take it: relative or absolute, no remap syntax.
_ACTION_NAME = re.compile(r'^~?/?[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$')
_PARAM_KEY = re.compile(r'^[A-Za-z_][A-Za-z0-9_.-]{0,63}$')
_OUTCOMES = ('done', 'failed', 'canceled')

T = TypeVar('T')


@dataclass(frozen=True)
class ExecutorConfig:
    """How the executor drives tasks through their skill servers."""

    default_server: str = setting('execute_task', 'ExecuteTask action server of every task '
                                  'type skill_servers does not name ("": those types fail)')
    skill_servers: tuple[str, ...] = setting(
        (), 'per task type server, "type=action_name" (e.g. pick=arm/pick)',
        array_type='string')
    task_parameters: tuple[str, ...] = setting(
        (), 'goal parameters per task type, "type.key=value" (e.g. pick.gripper=soft)',
        array_type='string')
    max_retries: int = setting(2, 'attempts after the first on rejection, failure or timeout',
                               low=0, high=100)
    retry_delay_s: float = setting(1.0, 'wait before a retry', unit='s', low=0.0, high=600.0)
    accept_timeout_s: float = setting(5.0, 'a goal not accepted or rejected by then is one '
                                      'failed attempt', unit='s', low=0.1, high=600.0)
    server_timeout_s: float = setting(30.0, 'a task whose server is not up this long fails',
                                      unit='s', low=0.1, high=86400.0)
    timeout_factor: float = setting(3.0, 'execution timeout: duration_s times this ...',
                                    low=1.0, high=1000.0)
    timeout_margin_s: float = setting(30.0, '... plus this, in work at the speed scale',
                                      unit='s', low=0.0, high=86400.0)
    cancel_timeout_s: float = setting(10.0, 'a cancelled goal not ended by then is given up '
                                      'on', unit='s', low=0.1, high=600.0)
    stall_timeout_s: float = setting(60.0, 'a task held stopped this long fails', unit='s',
                                     low=0.1, high=86400.0)
    max_remembered: int = setting(10_000, 'finished task ids kept so none runs twice', low=1,
                                  high=10000000)
    step_period_s: float = setting(0.1, 'executor step period', unit='s', low=0.001, high=10.0)
    speed_timeout_s: float = setting(1.0, 'an older speed scale or protective stop counts as '
                                     'none (stopped)', unit='s', low=0.01, high=60.0)
    _servers: dict[str, str] = field(init=False, repr=False, compare=False)
    _params: dict[str, dict[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_settings(self, BridgeError)
        if self.default_server and not _ACTION_NAME.match(self.default_server):
            raise BridgeError(f'default_server {self.default_server!r} is no action name')
        object.__setattr__(self, '_servers', _pairs(
            self.skill_servers, 'skill_servers', 'type=action_name', _check_server))
        params: dict[str, dict[str, str]] = {}
        for entry in self.task_parameters:
            head, sep, value = entry.partition('=')
            task_type, dot, key = head.partition('.')
            if not sep or not dot:
                raise BridgeError(f'task_parameters entry {entry!r}: use "type.key=value"')
            _check_type(task_type, 'task_parameters', entry)
            if not _PARAM_KEY.match(key):
                raise BridgeError(f'task_parameters entry {entry!r}: key {key!r} must be '
                                  'letters, digits, _ . - (64 at most)')
            if key in params.setdefault(task_type, {}):
                raise BridgeError(f'task_parameters: {task_type}.{key} given twice')
            params[task_type][key] = value
        object.__setattr__(self, '_params', params)

    def server_for(self, task_type: str) -> str:
        """Return the action server of a task type ('' when it has none)."""
        return self._servers.get(task_type, self.default_server)

    def parameters_for(self, task_type: str) -> dict[str, str]:
        """Return the goal parameters of a task type."""
        return dict(self._params.get(task_type, {}))

    def servers(self) -> tuple[str, ...]:
        """Every server some task type uses, sorted."""
        return tuple(sorted({self.server_for(t) for t in TASK_TYPES} - {''}))


def _check_type(task_type: str, name: str, entry: str) -> None:
    if task_type not in TASK_TYPES:
        raise BridgeError(f'{name} entry {entry!r}: type {task_type!r} is not one of '
                          f'{", ".join(TASK_TYPES)}')


def _check_server(value: str, entry: str) -> None:
    if not _ACTION_NAME.match(value):
        raise BridgeError(f'skill_servers entry {entry!r}: {value!r} is no action name')


def _pairs(entries: tuple[str, ...], name: str, form: str,
           check: Callable[[str, str], None]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in entries:
        key, sep, value = entry.partition('=')
        if not sep:
            raise BridgeError(f'{name} entry {entry!r}: use "{form}"')
        _check_type(key, name, entry)
        if key in out:
            raise BridgeError(f'{name}: type {key!r} given twice')
        check(value, entry)
        out[key] = value
    return out


def fresh_speed_scale(sample: tuple[T, float] | None, now_s: float,
                      timeout_s: float) -> T | None:
    """Return the value of a (value, received at) sample; None if none or older than timeout."""
    if sample is None or now_s - sample[1] > timeout_s:
        return None
    return sample[0]


def result_outcome(status: str, outcome: str) -> str:
    """Return the outcome of a goal result: the result's own, else the action status's.

    ``status`` is the action's terminal status (``succeeded``, ``aborted``, ``canceled``);
    an unknown outcome text counts as ``failed`` (the skill did not say it was done).
    """
    if outcome in _OUTCOMES:
        return outcome
    if not outcome:
        return {'succeeded': 'done', 'canceled': 'canceled'}.get(status, 'failed')
    return 'failed'


@dataclass(frozen=True)
class SendGoal:
    """Send the ExecuteTask goal of ``task`` to ``server``; later events name it by ``key``."""

    key: int
    server: str
    mission: Mission
    task: Task
    parameters: Mapping[str, str]
    resume: bool = False       # the same task again after a protective stop


@dataclass(frozen=True)
class CancelGoal:
    """Cancel the accepted goal ``key``."""

    key: int
    reason: str


Intent = SendGoal | CancelGoal


@dataclass
class ActiveTask:
    """The task in hand, from its first goal to its end."""

    task: Task
    mission: Mission
    server: str
    goal: int | None = None          # its current goal, if any
    started: bool = False            # a goal of it was accepted (reported started)
    attempts: int = 0                # failed attempts so far
    resumes: int = 0
    resume_next: bool = False        # the next goal resumes after a stop
    work_s: float = 0.0              # speed-scaled seconds its goals ran
    stalled_s: float = 0.0           # held stopped
    server_wait_s: float = 0.0       # waiting for its server to come up
    not_before: float = 0.0          # retry delay
    progress: float = 0.0            # the skill's last feedback
    state: str = ''
    timeout_s: float = math.inf      # speed-scaled work after which a goal is given up on
    valid_until: float = math.inf    # of the newest mission version that lists it


@dataclass
class _Goal:
    """A goal sent: waiting for its answer, running, or cancelled and not ended yet."""

    task: ActiveTask | None          # None: a stray goal being cancelled
    state: str                       # sending | running | cancelling | abandoned
    since: float
    then: str = ''                   # after its cancel: pause | retry | fail | '' (nothing)
    reason: str = ''                 # the failure to report after a cancel (then fail/retry)


@dataclass
class MissionExecutor:
    """Runs the newest valid mission one task at a time through skill goals."""

    cfg: ExecutorConfig = field(default_factory=ExecutorConfig)
    mission: Mission | None = None
    active: ActiveTask | None = None
    finished: dict[str, str] = field(default_factory=dict)   # task id -> done | failed
    counts: dict[str, int] = field(default_factory=dict)     # goals sent, retries, ...
    odd: dict[str, int] = field(default_factory=dict)        # ignored goal events by reason
    stopped: bool = True
    _pending: list[Task] = field(default_factory=list)
    _goals: dict[int, _Goal] = field(default_factory=dict)
    _next_key: int = 1
    _last_step: float | None = None
    _ready: dict[str, bool] = field(default_factory=dict)
    _intents: list[Intent] = field(default_factory=list)
    _reports: list[TaskProgress] = field(default_factory=list)

    # -- inputs ---------------------------------------------------------------------------

    def accept(self, mission: Mission, now: float) -> bool:
        """Take a mission; False (and no change) if it is not newer than the current one."""
        current = self.mission
        if now >= mission.valid_until:   # expired on arrival: it changes nothing here
            self._count('missions_expired_on_arrival')
            return False
        if current is not None and mission.mission_id == current.mission_id \
                and mission.version <= current.version:
            return False
        if current is not None and mission.mission_id != current.mission_id \
                and mission.issued_at < current.issued_at:
            return False
        self.mission = mission
        listed = {t.task_id for t in mission.tasks}
        active = self.active
        if active is not None and active.task.task_id not in listed:
            self._supersede(active, mission, now)
        elif active is not None:
            active.valid_until = mission.valid_until
        running = self.active.task.task_id if self.active else None
        self._pending = [t for t in mission.tasks
                         if self.finished.get(t.task_id) != 'done' and t.task_id != running]
        return True

    def servers_ready(self, ready: Mapping[str, bool]) -> None:
        """Tell which action servers are up now (the node asks its clients each step)."""
        self._ready = dict(ready)

    def step(self, now: float, speed_scale: float | None,
             protective_stop: bool | None = None) -> None:
        """Advance to ``now`` (unix time) at the speed scale and protective stop given."""
        dt = 0.0 if self._last_step is None else max(0.0, now - self._last_step)
        self._last_step = now
        self.stopped = bool(protective_stop) or speed_scale is None \
            or not math.isfinite(speed_scale) or speed_scale <= 0.0
        scale = 0.0 if self.stopped else min(1.0, float(speed_scale or 0.0))
        self._expire_goals(now)
        active = self.active
        if active is not None:
            self._tend(active, now, dt, scale)
        if self.active is None:
            self._start_next(now)
        if self.active is not None:
            self._send(self.active, now, dt)

    def on_accepted(self, key: int, now: float) -> None:
        """Take the skill's accept of goal ``key``."""
        goal = self._goals.get(key)
        if goal is None or goal.state != 'sending':
            self._odd('accept_of_a_goal_given_up')   # answered with a cancel: nobody wants it
            self._goals[key] = _Goal(None, 'cancelling', now)
            self._intents.append(CancelGoal(key, 'no longer wanted'))
            return
        goal.state, goal.since = 'running', now
        active = goal.task
        assert active is not None
        if not active.started:
            active.started = True
            self._report(active, 'started', '', now)
        if self.stopped:
            self._cancel(key, goal, 'pause', 'protective stop', now)

    def on_rejected(self, key: int, now: float, reason: str = '') -> None:
        """Take the skill's refusal of goal ``key`` (or: it could not be sent)."""
        goal = self._goals.get(key)
        if goal is not None and goal.state == 'abandoned':
            del self._goals[key]   # refused after all: nothing runs
            return
        if goal is None or goal.state != 'sending':
            self._odd('rejection_of_a_goal_not_sent')
            return
        del self._goals[key]
        if goal.task is not None:
            goal.task.goal = None
            self._attempt_failed(goal.task, 'rejected', reason or 'the skill refused the goal',
                                 now)

    def on_feedback(self, key: int, progress: float, state: str) -> None:
        """Feedback of goal ``key``: kept for diagnostics."""
        goal = self._goals.get(key)
        if goal is None or goal.task is None or goal.state != 'running':
            self._odd('feedback_of_a_goal_not_running')
            return
        if math.isfinite(progress):
            goal.task.progress = min(1.0, max(0.0, progress))
        goal.task.state = state[:32]

    def on_result(self, key: int, outcome: str, reason: str, now: float) -> None:
        """Goal ``key`` ended with ``outcome`` (see :func:`result_outcome`)."""
        goal = self._goals.pop(key, None)
        if goal is None or goal.state == 'sending':
            if goal is not None:
                self._goals[key] = goal
            self._odd('result_of_an_unknown_goal')
            return
        active = goal.task
        if active is None:
            return   # a stray goal we cancelled has ended
        if active is self.active:
            active.goal = None
        outcome = result_outcome('', outcome)
        if outcome == 'done':
            self._close(active, 'done', '', now)
        elif goal.state == 'cancelling':
            self._after_cancel(active, goal, now)
        elif outcome == 'canceled':
            self._attempt_failed(active, 'canceled', reason or 'canceled by the skill', now)
        else:
            self._attempt_failed(active, 'aborted', reason or 'the skill failed', now)

    def take(self) -> tuple[list[Intent], list[TaskProgress]]:
        """Return and forget the intents and reports since the last call, in order."""
        intents, reports = self._intents, self._reports
        self._intents, self._reports = [], []
        return intents, reports

    # -- the rules ------------------------------------------------------------------------

    def _tend(self, active: ActiveTask, now: float, dt: float, scale: float) -> None:
        goal = self._goals.get(active.goal) if active.goal is not None else None
        if self.stopped:
            active.stalled_s += dt
            if goal is not None and goal.state == 'running' and active.goal is not None:
                self._cancel(active.goal, goal, 'pause', 'protective stop', now)
            if active.stalled_s >= self.cfg.stall_timeout_s:
                self._fail_in_hand(active, f'stalled: stopped for {active.stalled_s:.0f} s '
                                   '(protective stop or no safety monitor)', now)
            return
        active.stalled_s = 0.0
        if goal is not None and goal.state == 'running' and active.goal is not None:
            active.work_s += dt * scale
            if active.work_s > active.timeout_s:
                self._cancel(active.goal, goal, 'retry', f'execution timeout: '
                             f'{active.work_s:.0f} s of work for a {active.task.duration_s:g} s '
                             'task', now)

    def _start_next(self, now: float) -> None:
        mission = self.mission
        while self._pending and mission is not None and now < mission.valid_until \
                and not self.stopped and not self._draining():
            task = self._pending.pop(0)
            if self.finished.get(task.task_id) == 'done':
                continue
            self.active = ActiveTask(
                task, mission, self.cfg.server_for(task.type),
                timeout_s=task.duration_s * self.cfg.timeout_factor + self.cfg.timeout_margin_s,
                valid_until=mission.valid_until)
            if not self.active.server:
                self._close(self.active, 'failed', f'no_server: no skill server for type '
                            f'{task.type!r} (set skill_servers or default_server)', now)
                continue
            return

    def _send(self, active: ActiveTask, now: float, dt: float) -> None:
        if active.goal is not None or self.stopped or self._draining() \
                or now < active.not_before:
            return
        if now >= active.valid_until:
            self._fail_in_hand(active, 'expired: the mission is past valid_until', now)
            return
        if not self._ready.get(active.server, False):
            active.server_wait_s += dt
            if active.server_wait_s >= self.cfg.server_timeout_s:
                self._fail_in_hand(active, f'no_server: {active.server} not available for '
                                   f'{active.server_wait_s:.0f} s', now)
            return
        active.server_wait_s = 0.0
        key = self._next_key
        self._next_key += 1
        self._goals[key] = _Goal(active, 'sending', now)
        active.goal = key
        active.progress, active.state = 0.0, ''
        self._count('goals_sent')
        if active.resume_next:
            active.resumes += 1
            self._count('resumes')
        self._intents.append(SendGoal(key, active.server, active.mission, active.task,
                                      self.cfg.parameters_for(active.task.type),
                                      active.resume_next))
        active.resume_next = False

    def _expire_goals(self, now: float) -> None:
        for key, goal in list(self._goals.items()):
            if goal.state == 'sending' and now - goal.since >= self.cfg.accept_timeout_s:
                task = goal.task
                self._abandon(goal, now)   # a late accept is answered with a cancel
                if task is not None:
                    task.goal = None
                    self._attempt_failed(task, 'accept_timeout', f'no answer to the goal '
                                         f'in {self.cfg.accept_timeout_s:g} s', now)
            elif goal.state == 'abandoned' and now - goal.since >= self.cfg.accept_timeout_s:
                del self._goals[key]   # never answered at all: the skill never had it
                self._count('abandoned_unanswered')
            elif goal.state == 'cancelling' and now - goal.since >= self.cfg.cancel_timeout_s:
                del self._goals[key]
                self._count('cancel_timeouts')
                if goal.task is not None:
                    if goal.task is self.active:
                        goal.task.goal = None
                    self._after_cancel(goal.task, goal, now)

    def _cancel(self, key: int, goal: _Goal, then: str, reason: str, now: float) -> None:
        goal.state, goal.since, goal.then, goal.reason = 'cancelling', now, then, reason
        self._count('cancels')
        self._intents.append(CancelGoal(key, reason))

    def _after_cancel(self, active: ActiveTask, goal: _Goal, now: float) -> None:
        """Do what a cancel was for, once its goal ended without being done."""
        if goal.then == 'pause':
            active.resume_next = True
        elif goal.then == 'retry':
            self._attempt_failed(active, 'timeout', goal.reason, now)
        elif goal.then == 'fail':
            self._close(active, 'failed', goal.reason, now)

    def _supersede(self, active: ActiveTask, mission: Mission, now: float) -> None:
        reason = f'superseded: mission {mission.mission_id} v{mission.version} no longer ' \
                 'lists the task'
        self.active = None
        goal = self._goals.get(active.goal) if active.goal is not None else None
        if goal is None or active.goal is None:
            if active.started:
                self._close(active, 'failed', reason, now)
            return
        if goal.state == 'sending':
            self._abandon(goal, now)   # not started: dropped; a late accept is cancelled
            self._count('dropped_unstarted')
            return
        if goal.state == 'running':
            self._cancel(active.goal, goal, 'fail', reason, now)
        else:   # cancelling already (a stop): report when it ends
            goal.then, goal.reason = 'fail', reason

    def _fail_in_hand(self, active: ActiveTask, reason: str, now: float) -> None:
        """Fail the task in hand now, or once its cancelled goal has ended."""
        goal = self._goals.get(active.goal) if active.goal is not None else None
        if goal is not None and goal.state == 'cancelling':
            goal.then, goal.reason = 'fail', reason
            self.active = None
            return
        if goal is not None and active.goal is not None:   # sending: a late accept is cancelled
            del self._goals[active.goal]
        self._close(active, 'failed', reason, now)

    def _attempt_failed(self, active: ActiveTask, cause: str, reason: str, now: float) -> None:
        active.attempts += 1
        if active.attempts > self.cfg.max_retries:
            self._close(active, 'failed', f'{cause}: {reason} (attempt {active.attempts} of '
                        f'{self.cfg.max_retries + 1})', now)
            return
        self._count('retries')
        active.not_before = now + self.cfg.retry_delay_s

    def _close(self, active: ActiveTask, status: str, reason: str, now: float) -> None:
        if active is self.active:
            self.active = None
        self.finished[active.task.task_id] = status
        while len(self.finished) > self.cfg.max_remembered:
            del self.finished[next(iter(self.finished))]
        self._report(active, status, reason, now)

    def _report(self, active: ActiveTask, status: str, reason: str, now: float) -> None:
        self._reports.append(TaskProgress(active.mission.mission_id, active.mission.version,
                                          active.task.task_id, status, now, reason[:1000]))

    @staticmethod
    def _abandon(goal: _Goal, now: float) -> None:
        """Give up a goal not answered yet; it holds the skill until its answer or a timeout.

        Forgetting it would let the next goal go out while the skill may still accept this
        one: two goals at once (a late accept is answered with a cancel, then it ends).
        """
        goal.state, goal.since, goal.task = 'abandoned', now, None

    def _draining(self) -> bool:
        return any(g.state in ('cancelling', 'abandoned') for g in self._goals.values())

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def _odd(self, reason: str) -> None:
        self.odd[reason] = self.odd.get(reason, 0) + 1

    # -- diagnostics ----------------------------------------------------------------------

    @property
    def pending(self) -> tuple[Task, ...]:
        """Tasks still to start, in order."""
        return tuple(self._pending)

    def goal_state(self) -> str:
        """Return where the task in hand is: sending, running, cancelling, held, waiting."""
        active = self.active
        if active is None:
            return ''
        if active.goal is not None and active.goal in self._goals:
            return self._goals[active.goal].state
        return 'held' if self.stopped else 'waiting'

    def summary(self) -> dict[str, object]:
        """Return what the executor is doing, for diagnostics."""
        counts: dict[str, int] = {}
        for status in self.finished.values():
            counts[status] = counts.get(status, 0) + 1
        active = self.active
        return {
            'mission': f'{self.mission.mission_id} v{self.mission.version}'
            if self.mission else '',
            'active': active.task.task_id if active else '',
            'goal': self.goal_state(),
            'goal_progress': round(active.progress, 3) if active else 0.0,
            'stopped': self.stopped,
            'pending': len(self._pending), 'done': counts.get('done', 0),
            'failed': counts.get('failed', 0),
            **{name: self.counts.get(name, 0) for name in
               ('goals_sent', 'retries', 'resumes', 'cancels', 'cancel_timeouts')},
            'odd_events': sum(self.odd.values())}

    def health(self, rejected: int) -> tuple[str, str]:
        """Return (level name, message): WARN once a remembered task failed or ``rejected`` > 0."""
        summary = self.summary()
        level = 'WARN' if summary['failed'] or rejected else 'OK'
        if not summary['active']:
            return level, 'idle'
        held = ' (held: stopped)' if self.stopped else ''
        return level, f'running {summary["active"]}{held}'

    def diagnostic_values(self, rejected: int) -> dict[str, str]:
        """Return :meth:`summary` as text, the odd events by reason, then ``missions_rejected``."""
        return {**{key: str(value) for key, value in self.summary().items()},
                **{f'odd_{reason}': str(n) for reason, n in sorted(self.odd.items())},
                'missions_rejected': str(rejected)}
