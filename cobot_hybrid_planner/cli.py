"""Planner sub-commands of ``cobot-hybrid``: ``plan ORDERS.yaml --site SITE.yaml [--json]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from cobot_hybrid_planner.errors import PlannerError

__all__ = ['register']


def _cmd_plan(args: argparse.Namespace) -> int:
    from cobot_hybrid_planner.orders import validate_orders
    from cobot_hybrid_planner.planning import FleetRobot, plan
    from cobot_hybrid_planner.site import load_site

    site = load_site(Path(args.site))
    try:
        data = yaml.safe_load(Path(args.orders).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PlannerError(f'orders file {args.orders} cannot be read: {exc}') from None
    tasks, rejected = validate_orders(data, site)
    robots = [FleetRobot(r.robot_id, r.capabilities, r.start) for r in site.robots.values()]
    result = plan(tasks, robots, site, time_limit_s=args.time_limit)
    task_map = {t.task_id: t for t in tasks}
    missions = {
        robot_id: [{'task_id': t, 'type': task_map[t].type, 'station': task_map[t].station,
                    'start_s': round(result.assignments[t].start_s, 1),
                    'end_s': round(result.assignments[t].end_s, 1),
                    'pose': {'x': site.stations[task_map[t].station].x,
                             'y': site.stations[task_map[t].station].y,
                             'yaw': site.stations[task_map[t].station].yaw}}
                   for t in order]
        for robot_id, order in result.orders.items()}
    report = {'method': result.method, 'makespan_s': round(result.makespan_s, 1),
              'weighted_lateness_s': round(result.weighted_lateness_s, 1),
              'cost': round(result.cost, 1), 'missions': missions,
              'rejected': {r.task_id: r.reason for r in rejected},
              'unassigned': result.unassigned, 'notes': result.notes}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f'{result.method}: makespan {result.makespan_s:.0f} s, weighted lateness '
          f'{result.weighted_lateness_s:.0f} s, cost {result.cost:.0f}')
    for robot_id, items in missions.items():
        steps = ', '.join(f'{i["task_id"]}@{i["station"]} {i["start_s"]:.0f}-{i["end_s"]:.0f}s'
                          for i in items)
        print(f'  {robot_id}: {steps or "(idle)"}')
    not_planned = {**{r.task_id: r.reason for r in rejected}, **result.unassigned}
    for task_id, reason in not_planned.items():
        print(f'  not planned: {task_id}: {reason}')
    return 0


def register(subparsers: Any) -> None:
    """Add ``plan``."""
    plan_cmd = subparsers.add_parser('plan', help='plan a work order offline')
    plan_cmd.add_argument('orders', help='work order YAML/JSON (schema cobot_hybrid/orders/v1)')
    plan_cmd.add_argument('--site', required=True, help='site YAML (stations, robots)')
    plan_cmd.add_argument('--time-limit', type=float, default=2.0)
    plan_cmd.add_argument('--json', action='store_true')
    plan_cmd.set_defaults(func=_cmd_plan)
