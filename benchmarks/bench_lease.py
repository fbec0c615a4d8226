"""Fleet-lease renewals on a loaded machine: the lease's own thread vs ticking it from the loop.

A planner replica that owns its fleet renews the lease every ``lease_s / 3`` and steps down
when it has not heard its own renewal for ``2/3 lease_s``. Before, the renewal was ticked from
the planner's loop, between plans; a plan (CP-SAT, ``plan_time_limit_s``) on a loaded machine
then delayed it, and a live owner lost its fleet. This measures, against a real mosquitto on
127.0.0.1 and with both cores kept busy by other processes, the gaps between renewals as a
watcher hears them:

* ``own thread``: :class:`FleetReplica` as shipped (the lease on its own thread) while the
  same process plans 100 tasks x 20 robots back to back;
* ``loop tick``: the previous way, ``tick()`` called between those plans.

Prints p50/p99/max of the gaps and how many exceeded the step-down threshold; asserts nothing.
Run: tools/run_isolated.sh .venv/bin/python benchmarks/bench_lease.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from cobot_hybrid_planner.lease import LeaseRecord, lease_topic
from cobot_hybrid_planner.orders import PlanTask
from cobot_hybrid_planner.planning import FleetRobot, plan
from cobot_hybrid_planner.replica import FleetReplica
from cobot_hybrid_planner.site import parse_site

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tools'))
from local_broker import start_mosquitto  # noqa: E402


def _burn(stop: multiprocessing.synchronize.Event) -> None:   # type: ignore[name-defined]
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _problem() -> tuple[list[PlanTask], list[FleetRobot], object]:
    rng = random.Random(3)
    site = parse_site({
        'stations': {f's{i}': {'x': rng.uniform(0, 30), 'y': rng.uniform(0, 30)}
                     for i in range(12)},
        'robots': {f'r{i}': {'capabilities': ['pick'], 'start': 's0'} for i in range(20)}})
    tasks = [PlanTask(f't{i}', 'pick', f's{rng.randrange(12)}', 'pick', rng.uniform(5, 60))
             for i in range(100)]
    robots = [FleetRobot(r.robot_id, r.capabilities, r.start) for r in site.robots.values()]
    return tasks, robots, site


def measure(port: int, mode: str, seconds: float, lease_s: float, time_limit_s: float
            ) -> list[float]:
    """Gaps [s] between the owner's renewals, as heard by a watcher."""
    fleet = f'bench-{mode}'
    heard: list[float] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f'watch-{mode}',
                          protocol=mqtt.MQTTv5)

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        record = LeaseRecord.parse(bytes(message.payload))
        if record is not None and record.owner == 'owner' and not message.retain:
            heard.append(time.monotonic())

    watcher.on_message = on_message
    watcher.connect('127.0.0.1', port)
    watcher.subscribe(lease_topic(fleet), qos=1)
    watcher.loop_start()
    replica = FleetReplica(fleet, 'owner', '127.0.0.1', port, lease_s)
    tasks, robots, site = _problem()
    if mode == 'own thread':
        replica.start()
    else:   # the previous design: the loop ticks the lease between plans
        replica.client.connect_async('127.0.0.1', port)
        replica.client.loop_start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if mode == 'loop tick':
            replica.tick(time.monotonic())
        plan(tasks, robots, site, time_limit_s=time_limit_s)   # type: ignore[arg-type]
        if mode == 'loop tick':
            replica.tick(time.monotonic())
    replica.stop()
    watcher.loop_stop()
    watcher.disconnect()
    return [b - a for a, b in zip(heard, heard[1:], strict=False)]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=30.0)
    parser.add_argument('--lease-s', type=float, default=6.0)
    parser.add_argument('--time-limit', type=float, default=2.0, help='plan_time_limit_s')
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix='cobot_hybrid_bench_lease_'))
    broker, port = start_mosquitto(workdir)
    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=_burn, args=(stop,)) for _ in range(2)]
    for proc in burners:
        proc.start()
    try:
        limit = 2.0 * args.lease_s / 3.0
        print(f'lease_s {args.lease_s} (renewal every {args.lease_s / 3:.2f} s, step-down '
              f'after {limit:.2f} s unheard), plans of 100 tasks x 20 robots with '
              f'plan_time_limit_s {args.time_limit}, 2 busy processes on 2 cores, '
              f'{args.seconds:.0f} s each')
        for mode in ('own thread', 'loop tick'):
            gaps = measure(port, mode, args.seconds, args.lease_s, args.time_limit)
            if len(gaps) < 2:
                print(f'  {mode:<11} fewer than 3 renewals heard')
                continue
            ordered = sorted(gaps)
            p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
            print(f'  {mode:<11} {len(gaps):>4} gaps: p50 {statistics.median(gaps):.3f} s, '
                  f'p99 {p99:.3f} s, max {ordered[-1]:.3f} s; over the step-down threshold: '
                  f'{sum(g >= limit for g in gaps)}')
    finally:
        stop.set()
        for proc in burners:
            proc.join(timeout=10)
        broker.terminate()
        broker.wait(timeout=10)


if __name__ == '__main__':
    main()
