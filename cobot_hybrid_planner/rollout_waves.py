"""Which robots get a new model at which step of a rollout: deterministic, spread across sites.

Pure. :func:`waves` orders the fleet once per rollout: robots are ranked inside each site by a
hash of ``(rollout_id, robot_id)`` (stable across restarts and replicas, different for every
rollout, so the same robot is not always the canary), then taken round-robin across the
sites, the site order itself hashed too. Step ``i`` of ``[0.05, 0.25, 1.0]`` covers the first
``ceil(fraction * n)`` robots of that order (at least one, and always more than the step
before while robots remain): a 5 % canary of 20 robots is one robot, of 100 robots five, one
per site before any site gets a second.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

__all__ = ['fleet_order', 'waves']


def _rank(rollout_id: str, name: str) -> bytes:
    return hashlib.sha256(f'{rollout_id}\n{name}'.encode()).digest()


def fleet_order(rollout_id: str, robots: Mapping[str, str]) -> list[str]:
    """Return every robot once, in the order the rollout reaches them (id -> site)."""
    by_site: dict[str, list[str]] = {}
    for robot_id, site in robots.items():
        by_site.setdefault(site, []).append(robot_id)
    queues = [sorted(members, key=lambda r: _rank(rollout_id, r))
              for _, members in sorted(by_site.items(), key=lambda kv: _rank(rollout_id,
                                                                             kv[0]))]
    order: list[str] = []
    depth = 0
    while len(order) < len(robots):
        order.extend(queue[depth] for queue in queues if depth < len(queue))
        depth += 1
    return order


def waves(rollout_id: str, robots: Mapping[str, str], steps: Sequence[float]
          ) -> list[list[str]]:
    """Return the robots of each step (cumulative: step i holds those of the steps before)."""
    order = fleet_order(rollout_id, robots)
    out: list[list[str]] = []
    count = 0
    for fraction in steps:
        wanted = min(len(order), max(1, math.ceil(fraction * len(order) - 1e-9)))
        if out and wanted <= count and count < len(order):
            wanted = count + 1
        count = max(count, wanted)
        out.append(order[:count])
    return out
