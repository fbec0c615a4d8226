"""Robot side of a mission: run its tasks in order at the speed the safety monitor allows.

Pure Python, no ROS. :class:`MissionExecutor` is the reference executor that
``mission_executor_node`` drives; on a real cell the user's skill server (MoveIt, a PLC
program) takes its place and publishes the same ``task_progress`` reports.

* a task's ``duration_s`` is its work at full speed; it advances by ``dt * speed_scale``, so a
  protective stop (scale 0) pauses it and a slow zone stretches it;
* a task held at scale 0 (or with no speed scale at all) for ``stall_timeout_s`` fails with
  that reason, so the planner can give it to another robot;
* a task that has started runs to its end or fails; a newer version of the mission (or a new
  mission) replaces only the tasks that have not started; a task done is never run twice,
  a failed one only when a newer version lists it again (the planner retries it);
* no task of an expired mission (``valid_until`` passed) is started: the robot keeps
  executing its last valid mission while offline, and no longer than that.

Every change is returned as a :class:`TaskProgress` (``started``, ``done``, ``failed``).

The node's rules live here too: a speed scale older than ``speed_timeout_s`` counts as none
(:func:`fresh_speed_scale`); the health (:meth:`MissionExecutor.health`) is WARN once a
remembered task failed or a mission was rejected, else OK.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_protocol.mission import Mission, Task, TaskProgress
from cobot_hybrid_protocol.settings import check_settings, setting

__all__ = ['ActiveTask', 'ExecutorConfig', 'MissionExecutor', 'fresh_speed_scale']


@dataclass(frozen=True)
class ExecutorConfig:
    """How the reference executor runs tasks."""

    stall_timeout_s: float = setting(60.0, 'a task held at speed scale 0 this long fails',
                                     unit='s', low=0.1, high=86400.0)
    max_remembered: int = setting(10_000, 'finished task ids kept so none runs twice', low=1,
                                  high=10000000)
    step_period_s: float = setting(0.1, 'executor step period', unit='s', low=0.001, high=10.0)
    speed_timeout_s: float = setting(1.0, 'an older speed scale counts as stopped', unit='s',
                                     low=0.01, high=60.0)

    def __post_init__(self) -> None:
        check_settings(self, BridgeError)
        for name in ('stall_timeout_s', 'step_period_s', 'speed_timeout_s'):
            if not getattr(self, name) > 0:
                raise BridgeError(f'{name} {getattr(self, name)} must be > 0')
        if self.max_remembered < 1:
            raise BridgeError('max_remembered must be >= 1')


def fresh_speed_scale(sample: tuple[float, float] | None, now_s: float,
                      timeout_s: float) -> float | None:
    """Return the value of a (value, received at) sample; None if none or older than timeout."""
    if sample is None or now_s - sample[1] > timeout_s:
        return None
    return sample[0]


@dataclass
class ActiveTask:
    """The task being executed."""

    task: Task
    mission_id: str
    version: int
    started_at: float
    work_s: float = 0.0              # nominal seconds of work done
    stalled_s: float = 0.0

    @property
    def fraction(self) -> float:
        """Share of the task done, 0..1."""
        return 1.0 if self.task.duration_s <= 0 else min(1.0, self.work_s / self.task.duration_s)


@dataclass
class MissionExecutor:
    """Runs the newest valid mission, one task at a time."""

    cfg: ExecutorConfig = field(default_factory=ExecutorConfig)
    mission: Mission | None = None
    active: ActiveTask | None = None
    finished: dict[str, str] = field(default_factory=dict)   # task id -> done | failed
    _pending: list[Task] = field(default_factory=list)
    _last_step: float | None = None

    def accept(self, mission: Mission) -> bool:
        """Take a mission; False (and no change) if it is not newer than the current one."""
        current = self.mission
        if current is not None and mission.mission_id == current.mission_id \
                and mission.version <= current.version:
            return False
        if current is not None and mission.mission_id != current.mission_id \
                and mission.issued_at < current.issued_at:
            return False
        self.mission = mission
        running = self.active.task.task_id if self.active else None
        self._pending = [t for t in mission.tasks
                         if self.finished.get(t.task_id) != 'done' and t.task_id != running]
        return True

    @property
    def pending(self) -> tuple[Task, ...]:
        """Tasks still to start, in order."""
        return tuple(self._pending)

    def step(self, now: float, speed_scale: float | None) -> list[TaskProgress]:
        """Advance to ``now`` at ``speed_scale`` (None: unknown, treated as stopped)."""
        dt = 0.0 if self._last_step is None else max(0.0, now - self._last_step)
        self._last_step = now
        scale = 0.0 if speed_scale is None or not math.isfinite(speed_scale) \
            else min(1.0, max(0.0, speed_scale))
        events: list[TaskProgress] = []
        active = self.active
        if active is not None:
            if scale > 0.0:
                active.work_s += dt * scale
                active.stalled_s = 0.0
            else:
                active.stalled_s += dt
            if active.work_s >= active.task.duration_s:
                events.append(self._finish('done', '', now))
            elif active.stalled_s >= self.cfg.stall_timeout_s:
                events.append(self._finish(
                    'failed', f'stalled: speed scale 0 for {active.stalled_s:.0f} s '
                    '(protective stop or no safety monitor)', now))
        while self.active is None and self._pending and self.mission is not None \
                and now < self.mission.valid_until:
            task = self._pending.pop(0)
            self.active = ActiveTask(task, self.mission.mission_id, self.mission.version, now)
            events.append(self._report(self.active, 'started', '', now))
            if task.duration_s <= 0:
                events.append(self._finish('done', '', now))
        return events

    def _finish(self, status: str, reason: str, now: float) -> TaskProgress:
        active = self.active
        assert active is not None
        self.active = None
        self.finished[active.task.task_id] = status
        while len(self.finished) > self.cfg.max_remembered:
            del self.finished[next(iter(self.finished))]
        return self._report(active, status, reason, now)

    @staticmethod
    def _report(active: ActiveTask, status: str, reason: str, now: float) -> TaskProgress:
        return TaskProgress(active.mission_id, active.version, active.task.task_id, status,
                            now, reason)

    def summary(self) -> dict[str, object]:
        """Return what the executor is doing, for diagnostics."""
        counts: dict[str, int] = {}
        for status in self.finished.values():
            counts[status] = counts.get(status, 0) + 1
        return {
            'mission': f'{self.mission.mission_id} v{self.mission.version}'
            if self.mission else '',
            'active': self.active.task.task_id if self.active else '',
            'active_fraction': round(self.active.fraction, 3) if self.active else 0.0,
            'pending': len(self._pending), 'done': counts.get('done', 0),
            'failed': counts.get('failed', 0)}

    def health(self, rejected: int) -> tuple[str, str]:
        """Return (level name, message): WARN once a remembered task failed or ``rejected`` > 0."""
        summary = self.summary()
        level = 'WARN' if summary['failed'] or rejected else 'OK'
        return level, f'running {summary["active"]}' if summary['active'] else 'idle'

    def diagnostic_values(self, rejected: int) -> dict[str, str]:
        """Return :meth:`summary` as text, then ``missions_rejected`` (refused by the node)."""
        return {**{key: str(value) for key, value in self.summary().items()},
                'missions_rejected': str(rejected)}
