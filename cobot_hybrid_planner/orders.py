"""Work orders, version 1, checked task by task against the site (the planner's side).

The order's shape is the contract's (:mod:`cobot_hybrid_protocol.orders`). A bad task is
rejected with its reason and the others go on; a task that depends (``after``) on a rejected
or unknown task is rejected too. :func:`validate_orders` returns both lists.

Every accepted number is one the planner can compute with (:class:`OrderLimits`): durations
up to ``max_duration_s``, release times and deadlines within ``horizon_s``; ids are printable
text of at most 128 characters; an order holds at most ``max_tasks`` tasks and a task at most
``max_after`` predecessors. The cycle search does not recurse (a precedence chain of any
length is fine).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.site import Site
from cobot_hybrid_protocol.limits import ID_MAX, is_name, is_number_in
from cobot_hybrid_protocol.orders import (
    ORDER_FIELDS,
    ORDERS_SCHEMA,
    PRIORITY_RANGE,
    TASK_FIELDS,
    TASK_REQUIRED,
    TASK_TYPES,
    OrderLimits,
)

__all__ = ['ORDERS_SCHEMA', 'OrderError', 'OrderLimits', 'PlanTask', 'Rejection',
           'validate_orders']

_ID_MAX = ID_MAX
_DEFAULT_LIMITS = OrderLimits()


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


def _id(value: Any, what: str) -> str:
    if not is_name(value, _ID_MAX):
        raise ValueError(f'{what} must be a non-empty printable string of at most {_ID_MAX} '
                         'chars')
    return value


def _task(raw: Any, site: Site, order_id: str, limits: OrderLimits) -> PlanTask:
    if not isinstance(raw, Mapping):
        raise ValueError('a task must be an object')
    unknown = set(raw) - TASK_FIELDS
    if unknown:
        raise ValueError(f'unknown fields {sorted(unknown)}')
    for key in TASK_REQUIRED:
        if key not in raw:
            raise ValueError(f'missing {key}')
    task_id = _id(raw['task_id'], 'task_id')
    for key in ('type', 'station', 'capability'):
        _id(raw[key], key)
    if raw['type'] not in TASK_TYPES:
        raise ValueError(f'type {raw["type"]!r} is not one of {TASK_TYPES}')
    if raw['station'] not in site.stations:
        raise ValueError(f'unknown station {raw["station"]!r}')
    if raw['capability'] not in site.capabilities:
        raise ValueError(f'no robot has capability {raw["capability"]!r}')
    numbers = {}
    for key, high in (('duration_s', limits.max_duration_s), ('release_s', limits.horizon_s),
                      ('deadline_s', limits.horizon_s)):
        value = raw.get(key)
        if value is None and key != 'duration_s':
            continue
        if not is_number_in(value, 0.0, high):
            raise ValueError(f'{key} must be a number in [0, {high:g}] s')
        numbers[key] = float(value)
    priority = raw.get('priority', 1)
    low, high = PRIORITY_RANGE
    if isinstance(priority, bool) or not isinstance(priority, int) \
            or not low <= priority <= high:
        raise ValueError(f'priority must be an integer {low}..{high}')
    release = numbers.get('release_s', 0.0)
    deadline = numbers.get('deadline_s')
    if deadline is not None and deadline < release + numbers['duration_s']:
        raise ValueError(f'impossible deadline: {deadline:.0f} s < release {release:.0f} s + '
                         f'duration {numbers["duration_s"]:.0f} s')
    after = raw.get('after', [])
    if not isinstance(after, list) or len(after) > limits.max_after \
            or not all(isinstance(a, str) and 0 < len(a) <= _ID_MAX for a in after):
        raise ValueError(f'after must be a list of at most {limits.max_after} task ids')
    if task_id in after:
        raise ValueError('a task cannot come after itself')
    return PlanTask(task_id, raw['type'], raw['station'], raw['capability'],
                    numbers['duration_s'], priority, release, deadline,
                    tuple(dict.fromkeys(after)), order_id)


def validate_orders(data: Any, site: Site, known_ids: frozenset[str] = frozenset(),
                    limits: OrderLimits = _DEFAULT_LIMITS,
                    failed_ids: frozenset[str] = frozenset()
                    ) -> tuple[list[PlanTask], list[Rejection]]:
    """Check an order; return (tasks to plan, rejected tasks with reasons).

    ``known_ids``: tasks the planner has already (ids cannot be reused; they can come
    before a new task), ``failed_ids``: those of them given up (nothing can come after them).
    """
    if not isinstance(data, Mapping) or data.get('schema') != ORDERS_SCHEMA:
        raise OrderError(f'an order must be an object with schema {ORDERS_SCHEMA!r}')
    if set(data) - ORDER_FIELDS or not isinstance(data.get('tasks'), list):
        raise OrderError('an order has exactly schema, order_id and a list of tasks')
    if len(data['tasks']) > limits.max_tasks:
        raise OrderError(f'an order holds at most {limits.max_tasks} tasks, this one '
                         f'{len(data["tasks"])}: split it')
    order_id = data.get('order_id', '')
    if not isinstance(order_id, str) or (order_id and not is_name(order_id, _ID_MAX)):
        raise OrderError(f'order_id must be printable text of at most {_ID_MAX} chars')
    accepted: dict[str, PlanTask] = {}
    rejected: list[Rejection] = []
    for index, raw in enumerate(data['tasks']):
        named = raw.get('task_id') if isinstance(raw, Mapping) else None
        task_id = named[:_ID_MAX] if isinstance(named, str) and named else f'#{index}'
        try:
            task = _task(raw, site, order_id, limits)
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
            missing = [a for a in task.after if (a not in accepted and a not in known_ids)
                       or a in failed_ids]
            if missing:
                del accepted[task.task_id]
                rejected.append(Rejection(task.task_id, f'depends on unknown, rejected or '
                                                        f'failed tasks {missing}'))
                changed = True
    cycle = _find_cycle(accepted)
    if cycle:
        for task_id in cycle:
            accepted.pop(task_id, None)
            rejected.append(Rejection(task_id, f'precedence cycle {" -> ".join(cycle)}'))
    return list(accepted.values()), rejected


def _find_cycle(tasks: Mapping[str, PlanTask]) -> list[str]:
    """Return the tasks of one precedence cycle (empty if none); iterative depth-first."""
    state: dict[str, int] = {}    # 1: on the path, 2: done
    for root in tasks:
        if root in state:
            continue
        path: list[str] = [root]
        pending: list[list[str]] = [[a for a in tasks[root].after if a in tasks]]
        state[root] = 1
        while path:
            if not pending[-1]:
                state[path.pop()] = 2
                pending.pop()
                continue
            before = pending[-1].pop()
            if state.get(before) == 1:
                return path[path.index(before):]
            if before not in state:
                state[before] = 1
                path.append(before)
                pending.append([a for a in tasks[before].after if a in tasks])
    return []
