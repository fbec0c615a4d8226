"""A fleet's history, made up: what N robots would send over D days, in the contract's formats.

For the batch job's tests and benchmark (``cobot-hybrid history generate``). Every message is
built with the contract's own builders (envelopes, status, task progress, model metrics,
snapshot headers) and stored through :meth:`HistoryStore.add`, so the batch job reads what a
real recorder would have written. Deterministic for a seed.

Per robot and day (a shift of ``shift_h`` hours from 06:00 UTC): protective stops (people
most often, then stale perception, then faults) as ``events/safety_state`` changes and
``events/protective_stop``; a snapshot header for each stop caused by a person; link outages
(``status`` offline/online, the bridge's backlog growing meanwhile); tasks started and done
(some failed); ``events/model_metrics`` naming the running model (robots of the second site
move to version 4 on the fourth day); the 10 s summaries and the bridge statistics every
``period_s``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cobot_hybrid_planner.offload.history import HistoryRow, HistoryStore
from cobot_hybrid_protocol.envelope import CONTRACT_TYPES, build_envelope
from cobot_hybrid_protocol.mission import PROGRESS_SCHEMA
from cobot_hybrid_protocol.model_update import METRICS_SCHEMA

__all__ = ['FleetSim', 'generate']

PEOPLE_CAUSES = ('person', 'holding')
STALE_CAUSES = ('stale_perception', 'no_perception', 'detector_unhealthy', 'recovering')
FAULT_CAUSES = ('fault', 'clock', 'malformed_input', 'robot_pose')


@dataclass(frozen=True)
class FleetSim:
    """The fleet to make up."""

    robots: int = 20
    sites: int = 2
    days: int = 7
    start_day: str = '2026-11-23'
    shift_h: float = 16.0
    period_s: float = 10.0            # summaries and bridge statistics
    stops_per_day: float = 40.0
    tasks_per_hour: float = 12.0
    outages_per_day: float = 1.5
    seed: int = 1

    def robot_ids(self) -> list[str]:
        """``cobot-01`` ... (zero-padded)."""
        return [f'cobot-{n + 1:02d}' for n in range(self.robots)]

    def site_of(self, robot_id: str) -> str:
        """Return the site a robot belongs to (robots dealt in turn)."""
        return f'site-{(self.robot_ids().index(robot_id) % self.sites) + 1}'


class _Robot:
    def __init__(self, sim: FleetSim, robot_id: str, rng: random.Random) -> None:
        self.sim, self.robot_id, self.rng = sim, robot_id, rng
        self.seq = 0
        self.rows: list[HistoryRow] = []

    def send(self, kind: str, stamp: float, topic: str, type_name: str,
             data: dict[str, object], extra_bytes: int = 0) -> None:
        self.seq += 1
        payload = build_envelope(self.robot_id, self.seq, stamp, topic, type_name, data)
        received = stamp + self.rng.uniform(0.02, 0.3)
        self.rows.append(HistoryRow(self.robot_id, kind, self.seq, stamp, received,
                                    len(payload) + extra_bytes, data))

    def status(self, state: str, stamp: float) -> None:
        self.rows.append(HistoryRow(self.robot_id, 'status', 0, stamp, stamp, 40,
                                    {'state': state, 'retained': False}))

    def safety(self, stamp: float, state: str, cause: str, closest: float,
               required: float) -> None:
        self.send('events/safety_state', stamp, 'safety_status',
                  'cobot_hybrid_msgs/msg/SafetyStatus',
                  {'state': state, 'cause': cause, 'reason': cause,
                   'speed_scale': 0.0 if state == 'PROTECTIVE_STOP' else 1.0,
                   # the bridge's codec writes non-finite floats as text
                   'closest_distance_m': str(closest) if closest == float('inf')
                   else round(closest, 3),
                   'required_separation_m': round(required, 3)})


def _day_rows(sim: FleetSim, robot: _Robot, day_start: float, day_index: int) -> None:
    rng = robot.rng
    start, end = day_start + 6 * 3600.0, day_start + 6 * 3600.0 + sim.shift_h * 3600.0
    robot.status('online', start)
    robot.safety(start + 1, 'RUN', 'clear', float('inf'), 0.0)
    # outages: [begin, end)
    outages = []
    for _ in range(_poisson(rng, sim.outages_per_day)):
        begin = rng.uniform(start + 600, end - 3600)
        outages.append((begin, begin + rng.uniform(30, 1200)))
    outages.sort()
    # stops
    stops = []
    for _ in range(_poisson(rng, sim.stops_per_day)):
        t = rng.uniform(start + 60, end - 120)
        pick = rng.random()
        cause = rng.choice(PEOPLE_CAUSES[:1]) if pick < 0.7 else rng.choice(STALE_CAUSES) \
            if pick < 0.9 else rng.choice(FAULT_CAUSES)
        stops.append((t, t + rng.uniform(2.0, 60.0), cause))
    stops.sort()
    last_end = start
    for begin, finish, cause in stops:
        if begin < last_end + 1:
            continue
        required = rng.uniform(0.8, 1.6)
        closest = required * rng.uniform(0.3, 1.0) if cause == 'person' else float('inf')
        robot.safety(begin - 0.5, 'SLOW', 'person' if cause == 'person' else cause,
                     closest * 1.3 if cause == 'person' else float('inf'), required)
        robot.safety(begin, 'PROTECTIVE_STOP', cause, closest, required)
        robot.send('events/protective_stop', begin, 'protective_stop', 'std_msgs/msg/Bool',
                   {'data': True})
        if cause == 'person':
            jpeg = rng.randint(35_000, 70_000)
            robot.send('events/stop_snapshot', begin, 'image', CONTRACT_TYPES['snapshot'],
                       {'image': {'width': 640, 'height': 480, 'bytes': jpeg},
                        'trigger': {'topic': 'protective_stop', 'field': 'data',
                                    'value': True, 'stamp': begin},
                        'context_topics': ['detections']}, extra_bytes=jpeg + 1500)
        robot.safety(finish, 'RUN', 'clear', float('inf'), 0.0)
        robot.send('events/protective_stop', finish, 'protective_stop', 'std_msgs/msg/Bool',
                   {'data': False})
        last_end = finish
    # tasks
    version = 4 if (robot.sim.site_of(robot.robot_id) == 'site-2' and day_index >= 3) else 3
    t, task = start + 30, 0
    while t < end - 60:
        task += 1
        mission = f'm-{day_index}-{robot.robot_id}'
        for status, at in (('started', t), ('done' if rng.random() > 0.03 else 'failed',
                                            t + rng.uniform(120, 420))):
            robot.send('events/task_progress', at, 'task_progress',
                       CONTRACT_TYPES['task_progress'],
                       {'schema': PROGRESS_SCHEMA, 'mission_id': mission, 'version': 1,
                        'task_id': f't{task}', 'status': status, 'reason': '', 'stamp': at})
        t += rng.expovariate(sim.tasks_per_hour / 3600.0)
    # periodic: summaries, bridge statistics, model metrics
    t = start
    backlog = 0
    outage = 0
    while t < end:
        down = outage < len(outages) and outages[outage][0] <= t < outages[outage][1]
        if outage < len(outages) and t >= outages[outage][1]:
            outage += 1
        backlog = backlog + 7 if down else max(0, backlog - 40)
        robot.send('telemetry/bridge', t, 'bridge', CONTRACT_TYPES['bridge'],
                   {'connected': not down, 'backlog_messages': backlog,
                    'backlog_bytes': backlog * 420, 'rtt_ms': round(rng.uniform(20, 80), 1)})
        robot.send('telemetry/detections_summary', t, 'detections',
                   'vision_msgs/msg/Detection2DArray',
                   {'field': 'detections', 'window_s': sim.period_s, 'count': 200,
                    'rate_hz': 20.0, 'mean': rng.uniform(0, 1.5), 'p50': 0, 'p99': 3})
        if int((t - start) // sim.period_s) % max(1, int(60 / sim.period_s)) == 0:
            robot.send('events/model_metrics', t, 'model_metrics',
                       CONTRACT_TYPES['model_metrics'],
                       {'schema': METRICS_SCHEMA,
                        'model': {'name': 'yolo11n-pose', 'version': version,
                                  'sha256': f'{version:064x}', 'size': 11_800_000,
                                  'imgsz': 320},
                        'window_s': 60.0, 'frames': 1200, 'errors': 0,
                        'latency_p50_ms': 24.0, 'latency_p99_ms': 31.0,
                        'detections_mean': 0.8, 'stamp': t})
        t += sim.period_s
    for begin, finish in outages:
        robot.status('offline', begin)
        robot.status('online', finish)
    robot.status('offline', end)


def _poisson(rng: random.Random, mean: float) -> int:
    count, total = 0, rng.expovariate(1.0)
    while total < mean:
        count += 1
        total += rng.expovariate(1.0)
    return count


def generate(sim: FleetSim, store: HistoryStore) -> Iterator[str]:
    """Make up the fleet's days into ``store`` (sealed, day by day); yield each day."""
    first = datetime.strptime(sim.start_day, '%Y-%m-%d').replace(tzinfo=timezone.utc)
    robots = {rid: _Robot(sim, rid, random.Random(f'{sim.seed}:{rid}'))
              for rid in sim.robot_ids()}
    for index in range(sim.days):
        day = first + timedelta(days=index)
        for robot in robots.values():
            _day_rows(sim, robot, day.timestamp(), index)
            store.add(robot.rows)
            robot.rows = []
        store.seal((day + timedelta(days=1, hours=1)).timestamp())
        yield day.strftime('%Y-%m-%d')
