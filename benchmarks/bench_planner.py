"""Planning 100 tasks x 20 robots within 2 s: our plan vs the greedy plan (makespan, cost).

A random site (30 stations on a 40 x 30 m floor, 0.5 m/s), 20 robots with 1-3 of four
capabilities, 100 tasks of 10-120 s with release times, deadlines on a third, 15 % with a
predecessor. Several seeds; prints makespan and cost of greedy vs the returned plan and the
wall time. Target: <= 2 s on 2 cores and makespan <= 0.9x greedy. Asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from cobot_hybrid_planner.orders import PlanTask
from cobot_hybrid_planner.planning import FleetRobot, greedy, plan
from cobot_hybrid_planner.site import Robot, Site, Station

CAPABILITIES = ('pick', 'place', 'inspect', 'screw')


def instance(seed: int, tasks: int, robots: int) -> tuple[Site, list[PlanTask],
                                                          list[FleetRobot]]:
    """Build a reproducible random site, fleet and task list."""
    rng = random.Random(seed)
    stations = {f's{i}': Station(f's{i}', rng.uniform(0, 40), rng.uniform(0, 30))
                for i in range(30)}
    fleet = {}
    for i in range(robots):
        caps = frozenset(rng.sample(CAPABILITIES, rng.randint(1, 3)) + ['pick'])
        fleet[f'r{i}'] = Robot(f'r{i}', caps, rng.choice(list(stations)))
    site = Site(stations, fleet, travel_speed_mps=0.5)
    items = []
    for i in range(tasks):
        release = rng.choice([0.0, 0.0, rng.uniform(0, 300)])
        duration = float(rng.randint(10, 120))
        deadline = release + duration + rng.uniform(200, 900) if rng.random() < 0.33 else None
        after = (f't{rng.randrange(i)}',) if i and rng.random() < 0.15 else ()
        items.append(PlanTask(f't{i}', 'pick', rng.choice(list(stations)),
                              rng.choice(CAPABILITIES), duration, rng.randint(1, 10), release,
                              deadline, after))
    robots_now = [FleetRobot(r.robot_id, r.capabilities, r.start) for r in fleet.values()]
    return site, items, robots_now


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, default=5)
    parser.add_argument('--time-limit', type=float, default=1.8)
    args = parser.parse_args()
    print(f'100 tasks x 20 robots, time limit {args.time_limit} s')
    print(f'{"seed":>4} {"greedy makespan":>15} {"ours":>8} {"ratio":>6} {"greedy cost":>11} '
          f'{"ours":>8} {"wall s":>7} method')
    ratios = []
    for seed in range(args.seeds):
        site, tasks, robots = instance(seed, 100, 20)
        base = greedy({t.task_id: t for t in tasks}, {r.robot_id: r for r in robots}, site)
        start = time.perf_counter()
        result = plan(tasks, robots, site, time_limit_s=args.time_limit, seed=seed)
        wall = time.perf_counter() - start
        ratio = result.makespan_s / base.makespan_s
        ratios.append(ratio)
        print(f'{seed:>4} {base.makespan_s:>15.0f} {result.makespan_s:>8.0f} {ratio:>6.2f} '
              f'{base.cost:>11.0f} {result.cost:>8.0f} {wall:>7.2f} {result.method}')
    print(f'median makespan ratio {statistics.median(ratios):.2f} (target <= 0.90)')


if __name__ == '__main__':
    main()
