"""What the robots say about their missions, applied to the ledger. No MQTT.

Task progress v1: ``started`` makes a task in progress (it stays with its robot, which is busy
until it ends), ``done`` closes it, ``failed`` puts it back to plan (``max_task_failures``
times, then it and what depends on it fail for good). A report counts only from the robot the
task is assigned to now (in progress: the robot that started it; open: the robot whose current
mission lists it), so a robot that was offline while its task moved cannot report it.

Mission acks: ``accepted`` (and a rejection as ``replayed``/``superseded``: the robot has it)
marks the mission acknowledged; ``store_rebuilt`` (the robot lost its replay store) makes the
planner issue the same tasks as a new version; any other rejection is recorded and replanned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cobot_hybrid_planner.ledger import Ledger
from cobot_hybrid_protocol.mission import MissionAck, TaskProgress

__all__ = ['ProgressTracker']

_LOG = logging.getLogger(__name__)


@dataclass
class ProgressTracker:
    """Applies task progress and mission acks to a ledger; counts what it ignores."""

    ledger: Ledger
    ignored: int = 0            # reports of tasks unknown or already closed
    unauthorized: int = 0       # reports from a robot the task is not assigned to

    def assigned(self, robot_id: str, task_id: str) -> bool:
        """Whether a task is the robot's now."""
        task = self.ledger.task(task_id)
        if task is not None and task[0] == 'in_progress':
            return task[2] == robot_id
        return self.ledger.mission_lists(robot_id, task_id)

    def on_progress(self, robot_id: str, report: TaskProgress, now: float,
                    max_failures: int) -> bool:
        """Apply one report; return whether the plan must be made again."""
        task_id, status = report.task_id, report.status
        task = self.ledger.task(task_id)
        if task is None or task[0] in ('done', 'failed'):
            self.ignored += 1   # not ours, or already closed (a late duplicate)
            _LOG.warning('progress %s of task %s from %s ignored: task is %s', status,
                         task_id, robot_id, task[0] if task else 'unknown')
            return False
        if not self.assigned(robot_id, task_id):
            self.unauthorized += 1
            _LOG.warning('progress %s of task %s from %s ignored: the task is not assigned '
                         'to that robot', status, task_id, robot_id)
            return False
        with self.ledger.tx():
            if status == 'started':
                self.ledger.start_task(task_id, robot_id, min(now, report.stamp))
            elif status == 'done':
                self.ledger.finish_task(task_id, robot_id, now)
            else:
                failures = task[1] + 1
                reason = f'{robot_id}: {report.reason}'
                self.ledger.reopen_task(task_id, failures, reason)
                if failures >= max_failures:
                    why = f'failed {failures} times, last {reason}'
                    with_it = self.ledger.give_up(task_id, why)
                    _LOG.error('task %s given up: %s (%d depending task(s) with it)', task_id,
                               why, with_it)
        _LOG.info('task %s %s on %s', task_id, status, robot_id)
        return status != 'started'   # a robot is free earlier or later than planned

    def on_ack(self, robot_id: str, ack: MissionAck) -> bool:
        """Apply one mission ack; return whether the plan must be made again."""
        if ack.mission_id is None or ack.version is None:
            # a command the robot could not read at all: not one of ours
            _LOG.warning('%s rejected an unreadable command: %s', robot_id, ack.reason)
            return False
        if ack.status == 'accepted' or ack.code in ('replayed', 'superseded'):
            self.ledger.mark_acked(robot_id, ack.mission_id, ack.version, 'accepted')
            return False
        if ack.code == 'store_rebuilt':
            # The robot refuses what was issued before its replay store was rebuilt: issue
            # the same tasks again as a new version (a new command id, issued now).
            _LOG.warning('%s rebuilt its replay store: sending its mission again', robot_id)
            self.ledger.forget_mission_tasks(robot_id)
            return True
        _LOG.error('mission rejected by %s: %s', robot_id, ack.reason)
        self.ledger.mark_acked(robot_id, ack.mission_id, ack.version, 'rejected')
        return True
