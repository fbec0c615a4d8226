"""Work orders, version 1: what an operator or an MES sends the cloud planner to do.

JSON on MQTT ``cobot/v1/orders`` (QoS 1, not retained), or YAML for ``cobot-hybrid plan``::

    {"schema": "cobot_hybrid/orders/v1", "order_id": "o-17",
     "tasks": [{"task_id": "t1", "type": "pick", "station": "press-1",
                "capability": "pick", "duration_s": 30, "priority": 5,
                "release_s": 0, "deadline_s": 600, "after": []}]}

Times are seconds from the planning epoch (the planner's "now"). The shape and bounds are the
contract (here, and in the JSON Schema of :mod:`cobot_hybrid_protocol.schemas`); whether a
station exists and a robot has the capability is the planner's check against its site, task
by task: a bad task is rejected with its reason and the others go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cobot_hybrid_protocol.mission import TASK_TYPES

__all__ = ['ORDERS_SCHEMA', 'ORDER_FIELDS', 'OrderLimits', 'PRIORITY_RANGE', 'TASK_FIELDS',
           'TASK_REQUIRED', 'TASK_TYPES', 'work_order']

ORDERS_SCHEMA = 'cobot_hybrid/orders/v1'
ORDER_FIELDS = frozenset({'schema', 'order_id', 'tasks'})
TASK_REQUIRED = ('task_id', 'type', 'station', 'capability', 'duration_s')
TASK_FIELDS = frozenset({*TASK_REQUIRED, 'priority', 'release_s', 'deadline_s', 'after'})
PRIORITY_RANGE = (1, 10)


@dataclass(frozen=True)
class OrderLimits:
    """What one order may ask for."""

    max_duration_s: float = 7 * 86_400.0     # one task
    horizon_s: float = 30 * 86_400.0         # release times and deadlines from now
    max_tasks: int = 2000                    # per order
    max_after: int = 64                      # predecessors of one task


def work_order(order_id: str, tasks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return a v1 work order of ``tasks`` (dicts with the task fields above)."""
    for task in tasks:
        unknown = set(task) - TASK_FIELDS
        if unknown:
            raise ValueError(f'unknown task fields {sorted(unknown)}')
    return {'schema': ORDERS_SCHEMA, 'order_id': order_id, 'tasks': [dict(t) for t in tasks]}
