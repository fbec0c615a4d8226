"""SSM core decision time for 1, 5 and 20 people (p50 / p99 over many evaluations).

Three rows per crowd size: the SSM decision alone (people already in 3D), the whole safety
pipeline of the node (boxes -> floor-plane localization -> decision) without ROS, measured to
the fixed TCP point, and the same pipeline with ``robot_geometry: arm`` (a UR5e joint state per
frame through the DH chain, separations to 7 capsules): what the arm's geometry costs.

Run: .venv/bin/python benchmarks/bench_ssm_core.py [--evaluations N]
Prints a table; asserts nothing (targets are judged by a person reading it).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from cobot_hybrid_perception.safety_pipeline import PersonDetection, SafetyConfig, SafetyPipeline
from cobot_hybrid_perception.ssm import Perception, Person, RobotState, SafetyMonitor, SsmConfig


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench(people_count: int, evaluations: int, seed: int = 0) -> tuple[float, float]:
    """Return (p50, p99) decision time in microseconds."""
    rng = random.Random(seed)
    cfg = SsmConfig()
    monitor = SafetyMonitor(cfg)
    robot = RobotState(0.1, 0.0, 0.8, speed_mps=0.3)
    dt, now, times = 0.02, 0.0, []
    for _ in range(evaluations):
        crowd = [Person(rng.uniform(0.3, 5.0), rng.uniform(-3.0, 3.0), 0.0,
                        rng.uniform(0.0, 0.2), f'p{i}') for i in range(people_count)]
        perception = Perception(now, crowd)
        start = time.perf_counter()
        monitor.evaluate(now, perception, robot)
        times.append((time.perf_counter() - start) * 1e6)
        now += dt
    return statistics.median(times), _percentile(times, 0.99)


def bench_pipeline(people_count: int, evaluations: int, seed: int = 0,
                   arm: bool = False) -> tuple[float, float]:
    """Return (p50, p99) of detections-to-decision time in microseconds."""
    rng = random.Random(seed)
    cfg = SafetyConfig(robot_geometry='arm') if arm else SafetyConfig()
    joints = list(cfg.arm_joint_names)
    pipeline = SafetyPipeline(cfg)
    pipeline.on_camera_info([500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0], 480)
    dt, now, times = 0.02, 0.0, []
    for _ in range(evaluations):
        crowd = []
        for i in range(people_count):
            u, v = rng.uniform(40, 600), rng.uniform(250, 470)
            crowd.append(PersonDetection('person', 0.9, (u - 30, v - 200, u + 30, v),
                                         None, f'p{i}'))
        q = [rng.uniform(-3.0, 3.0) for _ in joints]
        start = time.perf_counter()
        pipeline.on_robot_speed(now, 0.3)
        if arm:
            pipeline.on_joint_state(now, joints, q)
        pipeline.on_detections(now, crowd)
        pipeline.evaluate(now)
        times.append((time.perf_counter() - start) * 1e6)
        now += dt
    return statistics.median(times), _percentile(times, 0.99)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--evaluations', type=int, default=20000)
    args = parser.parse_args()
    print(f'SSM core decision time, {args.evaluations} evaluations each (target p99 <= 1000 us)')
    print(f'{"people":>6} {"what":<28} {"p50 [us]":>9} {"p99 [us]":>9}')
    for count in (1, 5, 20):
        for label, run in (('SSM decision', bench),
                           ('pipeline (boxes -> decision)', bench_pipeline),
                           ('pipeline, arm (7 capsules)',
                            lambda c, n: bench_pipeline(c, n, arm=True))):
            p50, p99 = run(count, args.evaluations)
            print(f'{count:>6} {label:<28} {p50:>9.1f} {p99:>9.1f}')


if __name__ == '__main__':
    main()
