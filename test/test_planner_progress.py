"""The planner follows task progress: in progress stays, done closes, failure and offline replan.

The service's MQTT client is not connected here (what it publishes stays in paho's queue);
messages go in through :meth:`PlannerService.receive` exactly as paho hands them over. The
whole path over a real broker is in test_planner_e2e.py.
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cobot_hybrid_planner.orders import ORDERS_SCHEMA
from cobot_hybrid_planner.service import PlannerConfig, PlannerService
from cobot_hybrid_planner.site import parse_site
from cobot_hybrid_protocol.envelope import build_envelope
from cobot_hybrid_protocol.mission import TaskProgress, progress_to_json

SITE = parse_site({
    'stations': {'a': {'x': 0, 'y': 0}, 'b': {'x': 10, 'y': 0}, 'c': {'x': 0, 'y': 10},
                 'd': {'x': 10, 'y': 10}},
    'robots': {'r1': {'capabilities': ['pick'], 'start': 'a'},
               'r2': {'capabilities': ['pick'], 'start': 'd'}}})
ORDER = {'schema': ORDERS_SCHEMA, 'order_id': 'o-1', 'tasks': [
    {'task_id': f't{i}', 'type': 'pick', 'station': s, 'capability': 'pick',
     'duration_s': 30} for i, s in enumerate('abcdab')]
    + [{'task_id': 'after0', 'type': 'pick', 'station': 'c', 'capability': 'pick',
        'duration_s': 10, 'after': ['t0']}]}
_seq = itertools.count(1)


class Fleet:
    """Robots talking to the planner: status and task progress, on a clock of our own."""

    def __init__(self, planner: PlannerService) -> None:
        self.planner = planner
        self.now = 1000.0

    def say(self, robot: str, kind: str, payload: bytes) -> None:
        # an uplink envelope carries its own seq; anything else gets one in the user properties
        props = {} if payload.startswith(b'{"robot_id"') else {'seq': str(next(_seq))}
        self.planner.receive(f'cobot/v1/{robot}/{kind}', payload, props)

    def alive(self, *robots: str) -> None:
        for robot in robots:
            self.say(robot, 'status', b'{"state": "online"}')

    def report(self, robot: str, task: str, status: str, reason: str = '') -> None:
        mission = self.planner.missions()[robot]
        body = progress_to_json(TaskProgress(mission['mission_id'], mission['version'], task,
                                             status, self.now, reason))
        self.say(robot, 'events/task_progress', build_envelope(
            robot, next(_seq), self.now, 'task_progress', 'cobot_hybrid/TaskProgress', body))

    def step(self, seconds: float = 1.0) -> None:
        self.now += seconds
        self.planner.step(now_s=self.now)


@pytest.fixture
def planner(tmp_path: Path) -> PlannerService:
    cfg = PlannerConfig(data_dir=tmp_path, plan_time_limit_s=0.3, offline_after_s=5.0,
                        max_task_failures=2)
    service = PlannerService(cfg, SITE, Ed25519PrivateKey.generate())
    yield service
    service.stop()


def tasks_of(planner: PlannerService, robot: str) -> list[str]:
    return planner.missions()[robot]['tasks']


def test_progress_keeps_tasks_in_progress_and_offline_robots_lose_theirs(
        planner: PlannerService) -> None:
    fleet = Fleet(planner)
    fleet.alive('r1', 'r2')
    planner.add_orders(ORDER, now_s=fleet.now)
    fleet.step()
    first = {r: tasks_of(planner, r) for r in ('r1', 'r2')}
    assert sorted(first['r1'] + first['r2']) == sorted(t['task_id'] for t in ORDER['tasks'])
    versions = {r: planner.missions()[r]['version'] for r in first}

    # r1 starts its first task: it is in progress; nobody's mission changes.
    one, two = first['r1'][0], first['r2'][0]
    fleet.alive('r1', 'r2')
    fleet.report('r1', one, 'started')
    fleet.report('r2', two, 'started')
    fleet.step()
    status = planner.task_status()
    assert status[one]['status'] == 'in_progress' and status[one]['robot_id'] == 'r1'
    assert {r: planner.missions()[r]['version'] for r in first} == versions

    # r1 finishes it: closed; the rest of the plan still holds, so no new version.
    fleet.alive('r1', 'r2')
    fleet.report('r1', one, 'done')
    fleet.step()
    assert planner.task_status()[one]['status'] == 'done'
    assert {r: planner.missions()[r]['version'] for r in first} == versions

    # r2 goes silent: its task in progress and the rest of its tasks move to r1.
    for _ in range(7):
        fleet.alive('r1')
        fleet.step()
    assert planner.online() == frozenset({'r1'})
    status = planner.task_status()
    assert status[two]['status'] == 'open'
    assert set(first['r2']) <= set(tasks_of(planner, 'r1'))   # its task in progress too
    assert one not in tasks_of(planner, 'r1')                  # done is never sent again
    assert planner.missions()['r1']['version'] > versions['r1']

    # A planner restart resumes from its ledger.
    again = PlannerService(planner.cfg, SITE, planner.private_key)
    try:
        assert again.task_status() == planner.task_status()
        assert again.missions() == planner.missions()
    finally:
        again.stop()


def test_a_failed_task_is_planned_again_then_given_up_with_its_successors(
        planner: PlannerService) -> None:
    fleet = Fleet(planner)
    fleet.alive('r1', 'r2')
    planner.add_orders(ORDER, now_s=fleet.now)
    fleet.step()
    holder = next(r for r in ('r1', 'r2') if 't0' in tasks_of(planner, r))
    fleet.alive('r1', 'r2')
    fleet.report(holder, 't0', 'started')
    fleet.report(holder, 't0', 'failed', 'gripper jammed')
    fleet.step()
    status = planner.task_status()['t0']
    assert (status['status'], status['failures']) == ('open', 1)
    assert 'gripper jammed' in status['reason']
    assert any('t0' in tasks_of(planner, r) for r in ('r1', 'r2'))   # planned again
    holder = next(r for r in ('r1', 'r2') if 't0' in tasks_of(planner, r))
    fleet.alive('r1', 'r2')
    fleet.report(holder, 't0', 'failed', 'gripper jammed again')
    fleet.step()
    status = planner.task_status()
    assert status['t0']['status'] == 'failed' and 'failed 2 times' in status['t0']['reason']
    assert status['after0']['status'] == 'failed'
    assert 'predecessor t0' in status['after0']['reason']
    assert all('t0' not in tasks_of(planner, r) and 'after0' not in tasks_of(planner, r)
               for r in ('r1', 'r2'))
    # A late report about a closed task changes nothing.
    fleet.alive('r1', 'r2')
    fleet.report(holder, 't0', 'done')
    fleet.step()
    assert planner.task_status()['t0']['status'] == 'failed'
    assert planner.progress_ignored == 1


def test_deadlines_count_from_when_the_order_arrived(planner: PlannerService) -> None:
    fleet = Fleet(planner)
    order = {'schema': ORDERS_SCHEMA, 'order_id': 'o-2', 'tasks': [
        {'task_id': 'late', 'type': 'pick', 'station': 'b', 'capability': 'pick',
         'duration_s': 10, 'deadline_s': 100}]}
    planner.add_orders(order, now_s=fleet.now)
    fleet.now += 60.0   # the robots come online a minute later
    fleet.alive('r1', 'r2')
    fleet.step()
    robot = next(r for r in ('r1', 'r2') if tasks_of(planner, r))
    envelope = json.loads(planner.ledger.db.execute(
        'SELECT envelope FROM missions WHERE robot_id = ?', (robot,)).fetchone()[0])
    mission = json.loads(base64.b64decode(envelope['payload']))   # signed envelope
    deadline = [t for t in mission['tasks'] if t['task_id'] == 'late'][0]['deadline']
    assert deadline == pytest.approx(1000.0 + 100.0)


def test_a_new_owner_takes_the_ledger_snapshot_and_keeps_its_own_open_tasks(
        tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    old = PlannerService(PlannerConfig(data_dir=tmp_path / 'old', fleet_id='cell-a',
                                       client_id='p1'), SITE, key)
    new = PlannerService(PlannerConfig(data_dir=tmp_path / 'new', fleet_id='cell-a',
                                       client_id='p2'), SITE, key)
    try:
        old.add_orders(ORDER, now_s=1000.0)
        with old.ledger.tx():
            old.ledger.db.execute("UPDATE tasks SET status = 'done' WHERE task_id = 't0'")
        own = {'schema': ORDERS_SCHEMA, 'order_id': 'local', 'tasks': [
            {'task_id': 'mine', 'type': 'pick', 'station': 'a', 'capability': 'pick',
             'duration_s': 5}]}
        new.add_orders(own, now_s=1000.0)
        assert new.replica is not None
        new.replica.snapshot = old.ledger_snapshot()
        new._adopt_snapshot()
        status = new.task_status()
        assert status['t0']['status'] == 'done' and status['mine']['status'] == 'open'
        assert set(status) == {t['task_id'] for t in ORDER['tasks']} | {'mine'}
        new.replica.snapshot = b'{"fleet": "cell-a", "epoch": '   # unreadable: kept as is
        new._adopt_snapshot()
        assert new.task_status() == status
    finally:
        old.stop()
        new.stop()
