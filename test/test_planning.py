"""Mission planning: brute-force optimum on small instances, replanning, bad orders and sites."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import yaml

from cobot_hybrid_planner.orders import ORDERS_SCHEMA, OrderError, PlanTask, validate_orders
from cobot_hybrid_planner.planning import FleetRobot, evaluate, greedy, plan
from cobot_hybrid_planner.site import Robot, Site, SiteError, Station, load_site, parse_site


def make_site(seed: int, stations: int = 4) -> Site:
    rng = random.Random(seed)
    names = [f's{i}' for i in range(stations)]
    return Site({n: Station(n, rng.uniform(0, 6), rng.uniform(0, 6)) for n in names},
                {'r1': Robot('r1', frozenset({'pick', 'place'}), 's0'),
                 'r2': Robot('r2', frozenset({'pick'}), 's1')}, travel_speed_mps=0.5)


def fleet(site: Site, **available: float) -> list[FleetRobot]:
    return [FleetRobot(r.robot_id, r.capabilities, r.start, available.get(r.robot_id, 0.0))
            for r in site.robots.values()]


def random_tasks(seed: int, count: int, site: Site) -> list[PlanTask]:
    rng = random.Random(seed)
    tasks = []
    for i in range(count):
        after = (f't{i - 1}',) if i and rng.random() < 0.3 else ()
        deadline = rng.choice([None, rng.uniform(20, 80)])
        tasks.append(PlanTask(f't{i}', 'pick', rng.choice(list(site.stations)),
                              rng.choice(['pick', 'pick', 'place']), float(rng.randint(5, 20)),
                              rng.randint(1, 5), float(rng.choice([0, 0, 10])), deadline, after))
    return tasks


def brute_force(tasks: list[PlanTask], robots: list[FleetRobot], site: Site) -> float:
    """Cheapest exact cost over every assignment and order."""
    task_map = {t.task_id: t for t in tasks}
    robot_map = {r.robot_id: r for r in robots}
    best = float('inf')
    ids = [t.task_id for t in tasks]
    for choice in itertools.product(list(robot_map), repeat=len(ids)):
        if any(task_map[t].capability not in robot_map[r].capabilities
               for t, r in zip(ids, choice, strict=True)):
            continue
        groups = {r: [t for t, c in zip(ids, choice, strict=True) if c == r] for r in robot_map}
        for orders in itertools.product(*(itertools.permutations(g) for g in groups.values())):
            result = evaluate(dict(zip(groups, orders, strict=True)), task_map, robot_map, site)
            if result is not None:
                best = min(best, result.cost)
    return best


@pytest.mark.parametrize('seed', range(6))
def test_small_instances_reach_the_brute_force_optimum(seed: int) -> None:
    site = make_site(seed)
    tasks = random_tasks(seed, 5, site)
    robots = fleet(site)
    optimum = brute_force(tasks, robots, site)
    result = plan(tasks, robots, site, time_limit_s=1.0, seed=seed)
    assert result.cost == pytest.approx(optimum, abs=1.0), result.notes
    assert result.cost <= greedy({t.task_id: t for t in tasks},
                                 {r.robot_id: r for r in robots}, site).cost + 1e-6


def test_plan_respects_capabilities_precedence_release_and_travel() -> None:
    site = make_site(1)
    tasks = random_tasks(3, 8, site)
    result = plan(tasks, fleet(site), site, time_limit_s=1.0)
    task_map = {t.task_id: t for t in tasks}
    assert set(result.assignments) == set(task_map)
    for task_id, item in result.assignments.items():
        task = task_map[task_id]
        assert task.capability in site.robots[item.robot_id].capabilities
        assert item.start_s >= task.release_s - 1e-9
        for before in task.after:
            assert item.start_s >= result.assignments[before].end_s - 1e-9
    for robot_id, order in result.orders.items():
        where, free = site.robots[robot_id].start, 0.0
        for task_id in order:
            item = result.assignments[task_id]
            assert item.start_s >= free + site.travel_s(where, task_map[task_id].station) - 1e-6
            where, free = task_map[task_id].station, item.end_s


def test_offline_robot_tasks_are_reassigned_and_others_stay() -> None:
    site = Site({'a': Station('a', 0, 0), 'b': Station('b', 4, 0), 'c': Station('c', 0, 4)},
                {r: Robot(r, frozenset({'pick'}), 'a') for r in ('r1', 'r2', 'r3')})
    tasks = [PlanTask(f't{i}', 'pick', 'abc'[i % 3], 'pick', 10.0) for i in range(9)]
    robots = fleet(site)
    first = plan(tasks, robots, site, time_limit_s=0.5)
    lost = next(r for r, order in first.orders.items() if order)
    offline = [FleetRobot(r.robot_id, r.capabilities, r.station, r.available_s,
                          online=r.robot_id != lost) for r in robots]
    second = plan(tasks, offline, site, time_limit_s=0.5, previous=first.orders)
    assert lost not in second.orders
    assert set(second.assignments) == {t.task_id for t in tasks}  # all reassigned
    for robot_id, order in first.orders.items():
        if robot_id != lost:  # the others keep their tasks, in their order
            kept = [t for t in second.orders[robot_id] if t in order]
            assert kept == order


def test_a_task_in_progress_keeps_its_robot_busy() -> None:
    site = make_site(2)
    tasks = [PlanTask('next', 'pick', 's2', 'pick', 10.0)]
    busy = [FleetRobot('r1', frozenset({'pick'}), 's3', available_s=100.0),
            FleetRobot('r2', frozenset({'pick'}), 's1', available_s=0.0)]
    result = plan(tasks, busy, site, time_limit_s=0.3)
    assert result.assignments['next'].robot_id == 'r2'


def test_no_capable_robot_is_reported_per_task() -> None:
    site = make_site(0)
    tasks = [PlanTask('weld', 'pick', 's0', 'place', 5.0),
             PlanTask('after-weld', 'pick', 's1', 'pick', 5.0, after=('weld',))]
    only_r2 = [FleetRobot('r1', frozenset({'pick', 'place'}), 's0', online=False),
               FleetRobot('r2', frozenset({'pick'}), 's1')]
    result = plan(tasks, only_r2, site, time_limit_s=0.3)
    assert "capability 'place'" in result.unassigned['weld']
    assert 'predecessor' in result.unassigned['after-weld']


def test_orders_are_checked_task_by_task() -> None:
    site = make_site(0)
    order = {'schema': ORDERS_SCHEMA, 'order_id': 'o1', 'tasks': [
        {'task_id': 'ok', 'type': 'pick', 'station': 's0', 'capability': 'pick',
         'duration_s': 10},
        {'task_id': 'where', 'type': 'pick', 'station': 'mars', 'capability': 'pick',
         'duration_s': 10},
        {'task_id': 'who', 'type': 'pick', 'station': 's0', 'capability': 'weld',
         'duration_s': 10},
        {'task_id': 'late', 'type': 'pick', 'station': 's0', 'capability': 'pick',
         'duration_s': 30, 'release_s': 10, 'deadline_s': 20},
        {'task_id': 'extra', 'type': 'pick', 'station': 's0', 'capability': 'pick',
         'duration_s': 1, 'colour': 'red'},
        {'task_id': 'child', 'type': 'pick', 'station': 's0', 'capability': 'pick',
         'duration_s': 1, 'after': ['where']},
        {'task_id': 'x', 'type': 'pick', 'station': 's0', 'capability': 'pick',
         'duration_s': 1, 'after': ['y']},
        {'task_id': 'y', 'type': 'pick', 'station': 's0', 'capability': 'pick',
         'duration_s': 1, 'after': ['x']},
        'not a task',
    ]}
    accepted, rejected = validate_orders(order, site)
    assert [t.task_id for t in accepted] == ['ok']
    reasons = {r.task_id: r.reason for r in rejected}
    assert 'unknown station' in reasons['where']
    assert "capability 'weld'" in reasons['who']
    assert 'impossible deadline' in reasons['late']
    assert 'unknown fields' in reasons['extra']
    assert 'depends on' in reasons['child']
    assert 'cycle' in reasons['x'] and 'cycle' in reasons['y']
    assert '#8' in reasons
    with pytest.raises(OrderError, match='schema'):
        validate_orders({'tasks': []}, site)


def test_site_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / 'site.yaml'
    path.write_text('stations:\n  a: {x: 0, y: 0}\n  b: {x: 3, y: 4}\n'
                    'robots:\n  r1: {capabilities: [pick], start: a}\n'
                    'travel_speed_mps: 1.0\ntravel_overrides_s: {a/b: 2.0}\n')
    site = load_site(path)
    assert site.travel_s('a', 'b') == site.travel_s('b', 'a') == 2.0
    for text, message in [('stations: {}\nrobots: {}', 'stations'),
                          ('stations: {a: {x: 0, y: 0}}\nrobots: {r: {capabilities: [p], '
                           'start: z}}', 'not a station'),
                          ('stations: {a: {x: 0}}\nrobots: {r: {capabilities: [p], '
                           'start: a}}', r'stations\.a'),
                          ('colour: red', 'unknown keys')]:
        with pytest.raises(SiteError, match=message):
            parse_site(yaml.safe_load(text))


def test_cli_plan_prints_missions_and_rejections(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    orders = yaml.safe_load((root / 'config' / 'examples' / 'orders.yaml').read_text())
    orders['tasks'].append({'task_id': 'weld', 'type': 'pick', 'station': 'press-1',
                            'capability': 'weld', 'duration_s': 10})
    path = tmp_path / 'orders.yaml'
    path.write_text(yaml.safe_dump(orders))
    result = subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', 'plan',
                             str(path), '--site', str(root / 'config' / 'examples' / 'site.yaml'),
                             '--time-limit', '0.5', '--json'], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    planned = {i['task_id'] for items in report['missions'].values() for i in items}
    assert planned == {t['task_id'] for t in orders['tasks']} - {'weld'}
    assert "capability 'weld'" in report['rejected']['weld']
    stack = next(i for items in report['missions'].values() for i in items
                 if i['task_id'] == 'stack')
    checks = [i for items in report['missions'].values() for i in items
              if i['task_id'] in ('check-1', 'check-2')]
    assert stack['start_s'] >= max(c['end_s'] for c in checks)
    bad = subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', 'plan',
                          str(path), '--site', str(tmp_path / 'nope.yaml')],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and 'cannot be read' in bad.stderr
