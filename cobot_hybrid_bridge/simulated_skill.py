"""The reference skill: a task's work simulated at the speed the safety monitor allows.

Pure Python, no ROS. :class:`SimulatedSkill` is what ``skill_server_node`` runs behind its
``ExecuteTask`` action server; a real cell puts its own server (MoveIt, a PLC program, Nav2)
on that action name instead (docs/skills.md).

* a goal's ``duration_s`` is its work at full speed; it advances by ``dt * speed_scale``, so a
  slow zone stretches it, and a speed scale of 0 (or none fresher than ``speed_timeout_s``)
  pauses it (feedback state ``paused``);
* one goal at a time: a goal that comes while one runs is refused (the executor never sends
  two; another client cannot take the skill over);
* a cancelled goal's work is remembered (``max_suspended`` of them): a goal for the same
  mission and task carries on from there, which is how the executor's resume after a
  protective stop continues a task instead of doing it again;
* a goal of a type in ``fail_types`` fails half way (to try the executor's retries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_protocol.mission import MAX_DURATION_S, TASK_TYPES
from cobot_hybrid_protocol.settings import check_settings, setting

__all__ = ['SimulatedSkill', 'SkillConfig', 'SkillStep', 'SkillTask']


@dataclass(frozen=True)
class SkillConfig:
    """How the reference skill server runs its goals."""

    server_name: str = setting('execute_task', 'ExecuteTask action name it serves')
    step_period_s: float = setting(0.05, 'work and feedback period', unit='s', low=0.001,
                                   high=10.0)
    speed_timeout_s: float = setting(1.0, 'an older speed scale counts as none (paused)',
                                     unit='s', low=0.01, high=60.0)
    fail_types: tuple[str, ...] = setting((), 'task types whose goals fail half way (tests)',
                                          array_type='string')
    max_suspended: int = setting(100, 'cancelled goals whose work is kept for a resume',
                                 low=0, high=100000)

    def __post_init__(self) -> None:
        check_settings(self, BridgeError)
        if not self.server_name:
            raise BridgeError('server_name must not be empty')
        for task_type in self.fail_types:
            if task_type not in TASK_TYPES:
                raise BridgeError(f'fail_types: {task_type!r} is not one of '
                                  f'{", ".join(TASK_TYPES)}')


@dataclass
class SkillTask:
    """The goal being worked on."""

    mission_id: str
    task_id: str
    type: str
    duration_s: float
    work_s: float = 0.0

    @property
    def progress(self) -> float:
        """Share of the work done, 0..1."""
        return 1.0 if self.duration_s <= 0 else min(1.0, self.work_s / self.duration_s)


@dataclass(frozen=True)
class SkillStep:
    """Where the goal stands after one step."""

    progress: float
    state: str            # running | paused
    speed_scale: float
    outcome: str = ''     # '' while it runs, else done | failed
    reason: str = ''


@dataclass
class SimulatedSkill:
    """One goal at a time, its work advanced by ``dt * speed_scale``."""

    cfg: SkillConfig = field(default_factory=SkillConfig)
    task: SkillTask | None = None
    counts: dict[str, int] = field(default_factory=dict)
    _suspended: dict[tuple[str, str], float] = field(default_factory=dict)

    def check_goal(self, mission_id: str, task_id: str, task_type: str,
                   duration_s: float) -> str:
        """Return why a goal is refused ('' when it is taken)."""
        if self.task is not None:
            return f'busy with task {self.task.task_id}'
        if task_type not in TASK_TYPES:
            return f'type {task_type[:40]!r} is not one of {", ".join(TASK_TYPES)}'
        if not math.isfinite(duration_s) or not 0.0 <= duration_s <= MAX_DURATION_S:
            return f'duration_s {duration_s} is not within 0 .. {MAX_DURATION_S:g}'
        if not mission_id or not task_id:
            return 'mission_id and task_id must not be empty'
        return ''

    def begin(self, mission_id: str, task_id: str, task_type: str,
              duration_s: float) -> SkillTask:
        """Take a goal that :meth:`check_goal` accepted; a suspended one carries on."""
        why = self.check_goal(mission_id, task_id, task_type, duration_s)
        if why:
            raise BridgeError(f'goal refused: {why}')
        work = self._suspended.pop((mission_id, task_id), 0.0)
        self.task = SkillTask(mission_id, task_id, task_type, duration_s, work)
        self._count('resumed' if work else 'accepted')
        return self.task

    def advance(self, dt: float, speed_scale: float | None) -> SkillStep:
        """Do ``dt`` seconds of work at ``speed_scale`` (None or 0: paused)."""
        task = self.task
        if task is None:
            raise BridgeError('advance() without a goal: begin() one first')
        scale = 0.0 if speed_scale is None or not math.isfinite(speed_scale) \
            else min(1.0, max(0.0, speed_scale))
        task.work_s += max(0.0, dt) * scale
        state = 'running' if scale > 0.0 else 'paused'
        if task.type in self.cfg.fail_types and task.progress >= 0.5:
            return self._end(SkillStep(task.progress, state, scale, 'failed',
                                       f'simulated failure of a {task.type} task'))
        if task.work_s >= task.duration_s:
            return self._end(SkillStep(1.0, state, scale, 'done'))
        return SkillStep(task.progress, state, scale)

    def cancel(self) -> SkillStep:
        """Stop the goal, keeping its work for a goal of the same task."""
        task = self.task
        if task is None:
            raise BridgeError('cancel() without a goal')
        if self.cfg.max_suspended > 0:
            self._suspended[(task.mission_id, task.task_id)] = task.work_s
            while len(self._suspended) > self.cfg.max_suspended:
                del self._suspended[next(iter(self._suspended))]
        return self._end(SkillStep(task.progress, 'paused', 0.0, 'canceled', 'cancel requested'))

    def abandon(self, reason: str) -> SkillStep:
        """End the goal as failed (the server is shutting down)."""
        task = self.task
        if task is None:
            raise BridgeError('abandon() without a goal')
        return self._end(SkillStep(task.progress, 'paused', 0.0, 'failed', reason))

    def _end(self, step: SkillStep) -> SkillStep:
        self.task = None
        self._count(step.outcome)
        return step

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
