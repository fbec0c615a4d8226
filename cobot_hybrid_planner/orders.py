"""Work orders, version 1: tasks to plan, checked one by one against the site.

A work order (JSON on MQTT ``cobot/v1/orders``, or YAML for ``cobot-hybrid plan``)::

    {"schema": "cobot_hybrid/orders/v1", "order_id": "o-17",
     "tasks": [{"task_id": "t1", "type": "pick", "station": "press-1",
                "capability": "pick", "duration_s": 30, "priority": 5,
                "release_s": 0, "deadline_s": 600, "after": []}]}

Times are seconds from the planning epoch (the planner's "now"). A bad task is rejected with
its reason and the others go on; a task that depends (``after``) on a rejected or unknown
task is rejected too. :func:`validate_orders` returns both lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.site import Site

__all__ = ['ORDERS_SCHEMA', 'OrderError', 'PlanTask', 'Rejection', 'validate_orders']

ORDERS_SCHEMA = 'cobot_hybrid/orders/v1'
TASK_TYPES = ('pick', 'place', 'inspect', 'move', 'wait', 'charge')
_TASK_KEYS = {'task_id', 'type', 'station', 'capability', 'duration_s', 'priority',
              'release_s', 'deadline_s', 'after'}


class OrderError(PlannerError, ValueError):
    """A work order as a whole is unusable (not a task-level problem)."""


@dataclass(frozen=True)
class PlanTask:
    """A task ready to plan."""

    task_id: str
    type: str
    station: str
    capability: str
    duration_s: float
    priority: int = 1
    release_s: float = 0.0
    deadline_s: float | None = None
    after: tuple[str, ...] = ()
    order_id: str = ''


@dataclass(frozen=True)
class Rejection:
    """A task that will not be planned, and why."""

    task_id: str
    reason: str


def _task(raw: Any, site: Site, order_id: str) -> PlanTask:
    if not isinstance(raw, Mapping):
        raise ValueError('a task must be an object')
    unknown = set(raw) - _TASK_KEYS
    if unknown:
        raise ValueError(f'unknown fields {sorted(unknown)}')
    for key in ('task_id', 'type', 'station', 'capability', 'duration_s'):
        if key not in raw:
            raise ValueError(f'missing {key}')
    if raw['type'] not in TASK_TYPES:
        raise ValueError(f'type {raw["type"]!r} is not one of {TASK_TYPES}')
    if raw['station'] not in site.stations:
        raise ValueError(f'unknown station {raw["station"]!r}')
    if raw['capability'] not in site.capabilities:
        raise ValueError(f'no robot has capability {raw["capability"]!r}')
    numbers = {}
    for key in ('duration_s', 'release_s', 'deadline_s'):
        value = raw.get(key)
        if value is None and key != 'duration_s':
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f'{key} must be a number >= 0')
        numbers[key] = float(value)
    priority = raw.get('priority', 1)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 10:
        raise ValueError('priority must be an integer 1..10')
    release = numbers.get('release_s', 0.0)
    deadline = numbers.get('deadline_s')
    if deadline is not None and deadline < release + numbers['duration_s']:
        raise ValueError(f'impossible deadline: {deadline:.0f} s < release {release:.0f} s + '
                         f'duration {numbers["duration_s"]:.0f} s')
    after = raw.get('after', [])
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise ValueError('after must be a list of task ids')
    return PlanTask(str(raw['task_id']), raw['type'], raw['station'], raw['capability'],
                    numbers['duration_s'], priority, release, deadline, tuple(after), order_id)


def validate_orders(data: Any, site: Site, known_ids: frozenset[str] = frozenset()
                    ) -> tuple[list[PlanTask], list[Rejection]]:
    """Check an order; return (tasks to plan, rejected tasks with reasons)."""
    if not isinstance(data, Mapping) or data.get('schema') != ORDERS_SCHEMA:
        raise OrderError(f'an order must be an object with schema {ORDERS_SCHEMA!r}')
    if set(data) - {'schema', 'order_id', 'tasks'} or not isinstance(data.get('tasks'), list):
        raise OrderError('an order has exactly schema, order_id and a list of tasks')
    order_id = str(data.get('order_id', ''))
    accepted: dict[str, PlanTask] = {}
    rejected: list[Rejection] = []
    for index, raw in enumerate(data['tasks']):
        task_id = str(raw.get('task_id', f'#{index}')) if isinstance(raw, Mapping) \
            else f'#{index}'
        try:
            task = _task(raw, site, order_id)
        except ValueError as exc:
            rejected.append(Rejection(task_id, str(exc)))
            continue
        if task.task_id in accepted or task.task_id in known_ids:
            rejected.append(Rejection(task_id, 'duplicate task_id'))
            continue
        accepted[task.task_id] = task
    changed = True
    while changed:  # drop tasks whose predecessors are missing, transitively
        changed = False
        for task in list(accepted.values()):
            missing = [a for a in task.after if a not in accepted and a not in known_ids]
            if missing:
                del accepted[task.task_id]
                rejected.append(Rejection(task.task_id, f'depends on unknown or rejected '
                                                        f'tasks {missing}'))
                changed = True
    cycle = _find_cycle(accepted)
    if cycle:
        for task_id in cycle:
            accepted.pop(task_id, None)
            rejected.append(Rejection(task_id, f'precedence cycle {" -> ".join(cycle)}'))
    return list(accepted.values()), rejected


def _find_cycle(tasks: Mapping[str, PlanTask]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(task_id: str) -> list[str]:
        state[task_id] = 1
        stack.append(task_id)
        for before in tasks[task_id].after:
            if before not in tasks:
                continue
            if state.get(before) == 1:
                return stack[stack.index(before):] + [before]
            if before not in state:
                found = visit(before)
                if found:
                    return found
        stack.pop()
        state[task_id] = 2
        return []

    for task_id in tasks:
        if task_id not in state:
            found = visit(task_id)
            if found:
                return list(dict.fromkeys(found))
    return []
