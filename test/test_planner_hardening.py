"""The planner under hostile input: orders, sites, retained and unauthorised messages.

Each crash of the hardening issue is a regression test here; a hypothesis property says that
any order the validation accepts plans without an exception (the 1e300 duration that made
CP-SAT raise on every replan).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cobot_hybrid_planner.orders import ORDERS_SCHEMA, OrderError, validate_orders
from cobot_hybrid_planner.planning import FleetRobot, plan
from cobot_hybrid_planner.service import PlannerConfig, PlannerService, load_orders_file
from cobot_hybrid_planner.site import SiteError, load_site, parse_site
from cobot_hybrid_protocol.clock import SteppableClock
from cobot_hybrid_protocol.envelope import build_envelope
from cobot_hybrid_protocol.mission import TaskProgress, progress_to_json
from cobot_hybrid_protocol.transport import MemoryBroker

SITE = parse_site({
    'stations': {'a': {'x': 0, 'y': 0}, 'b': {'x': 9999, 'y': -9999}, 'c': {'x': 3, 'y': 4}},
    'robots': {'r1': {'capabilities': ['pick'], 'start': 'a'},
               'r2': {'capabilities': ['pick', 'place'], 'start': 'c'}},
    'travel_speed_mps': 0.01})
_seq = itertools.count(1)


def task(task_id: str, **fields: object) -> dict[str, object]:
    return {'task_id': task_id, 'type': 'pick', 'station': 'a', 'capability': 'pick',
            'duration_s': 10, **fields}


def order(*tasks: dict[str, object]) -> dict[str, object]:
    return {'schema': ORDERS_SCHEMA, 'order_id': 'o', 'tasks': list(tasks)}


@pytest.mark.parametrize(('fields', 'reason'), [
    ({'duration_s': 1e300}, 'duration_s'),
    ({'duration_s': 8 * 86400}, 'duration_s'),
    ({'release_s': 1e12}, 'release_s'),
    ({'deadline_s': 1e200}, 'deadline_s'),
    ({'task_id': 'x' * 200}, 'task_id'),
    ({'task_id': 7}, 'task_id'),
    ({'station': ['a']}, 'station'),
    ({'after': ['p'] * 65}, 'after'),
    ({'task_id': 'self', 'after': ['self']}, 'itself'),
])
def test_out_of_range_tasks_are_rejected_with_the_field(fields: dict, reason: str) -> None:
    tasks, rejected = validate_orders(order({**task('x'), **fields}), SITE)
    assert not tasks and len(rejected) == 1 and reason in rejected[0].reason


def test_a_1500_task_precedence_chain_validates_and_a_long_cycle_is_found() -> None:
    chain = [task('t0')] + [task(f't{i}', after=[f't{i - 1}']) for i in range(1, 1500)]
    tasks, rejected = validate_orders(order(*chain), SITE)
    assert len(tasks) == 1500 and not rejected
    cycle = [task(f'c{i}', after=[f'c{(i - 1) % 1500}']) for i in range(1500)]
    tasks, rejected = validate_orders(order(*cycle), SITE)
    assert not tasks and len(rejected) == 1500
    assert all('precedence cycle' in r.reason for r in rejected)


def test_an_order_with_too_many_tasks_or_a_bad_order_id_is_refused() -> None:
    with pytest.raises(OrderError, match='at most 2000'):
        validate_orders(order(*[task(f't{i}') for i in range(2001)]), SITE)
    with pytest.raises(OrderError, match='order_id'):
        validate_orders({**order(task('t')), 'order_id': {'x': 1}}, SITE)


_NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**40),
                    st.booleans(), st.none(), st.text(max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({
    'duration_s': _NUMBER | st.floats(0, 7 * 86400), 'release_s': _NUMBER | st.floats(0, 1e6),
    'deadline_s': _NUMBER | st.floats(0, 3e6), 'priority': st.integers(-1, 11),
    'station': st.sampled_from(['a', 'b', 'c', 'nowhere']),
    'capability': st.sampled_from(['pick', 'place', 'fly'])}), min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=6))
def test_any_accepted_order_plans_without_an_exception(raw_tasks: list[dict],
                                                       edges: list[tuple[int, int]]) -> None:
    tasks = [{**t, 'task_id': f't{i}', 'type': 'pick',
              'after': sorted({f't{a}' for a, b in edges if b == i and a < len(raw_tasks)})}
             for i, t in enumerate(raw_tasks)]
    accepted, _ = validate_orders(order(*tasks), SITE)
    robots = [FleetRobot(r.robot_id, r.capabilities, r.start) for r in SITE.robots.values()]
    result = plan(accepted, robots, SITE, time_limit_s=0.2)
    planned = {t for o in result.orders.values() for t in o}
    assert planned | set(result.unassigned) == {t.task_id for t in accepted}


@pytest.mark.parametrize(('site', 'match'), [
    ({'stations': {'a': {'x': 1e308, 'y': 0}}}, 'stations.a.x'),
    ({'stations': {'a': {'x': 0, 'y': 0, 'yaw': 1e9}}}, 'yaw'),
    ({'travel_speed_mps': 1e-300}, 'travel_speed_mps'),
    ({'travel_overrides_s': {'a/a': 1e300}}, 'travel_overrides_s'),
    ({'robots': {'r/1': {'capabilities': ['pick'], 'start': 'a'}}}, 'robots'),
    ({'frame_id': 'map\n'}, 'frame_id'),
])
def test_site_values_are_bounded(site: dict, match: str) -> None:
    base = {'stations': {'a': {'x': 0, 'y': 0}},
            'robots': {'r1': {'capabilities': ['pick'], 'start': 'a'}}}
    with pytest.raises(SiteError, match=match):
        parse_site({**base, **site})


def test_site_and_order_files_are_read_with_limits(tmp_path: Path) -> None:
    deep = tmp_path / 'deep.yaml'
    deep.write_text('stations: ' + '[' * 5000 + ']' * 5000 + '\n')
    with pytest.raises(SiteError, match='deep'):
        load_site(deep)
    huge = tmp_path / 'orders.yaml'
    huge.write_text(f'schema: {ORDERS_SCHEMA}\nn: {"9" * 5000}\n')
    with pytest.raises(Exception, match='orders file'):
        load_orders_file(huge)


# --- the service: poison messages, retained ones, authorisation --------------------------------

@pytest.fixture
def planner(tmp_path: Path) -> PlannerService:
    service = PlannerService(PlannerConfig(data_dir=tmp_path, plan_time_limit_s=0.2), SITE,
                             Ed25519PrivateKey.generate(),
                             transport=MemoryBroker().transport('planner'))
    yield service
    service.stop()


def say(planner: PlannerService, topic: str, payload: bytes, retained: bool = False) -> None:
    # an uplink envelope carries its own seq; anything else gets one in the user properties
    props = {} if payload.startswith(b'{"robot_id"') else {'seq': str(next(_seq))}
    planner.receive(topic, payload, props, retained)


def test_poison_messages_are_counted_and_the_planner_goes_on(planner: PlannerService) -> None:
    poison = [
        ('cobot/v1/r1/telemetry/x', b'{"seq": Infinity}'),
        ('cobot/v1/r1/telemetry/x', b'[' * 5000 + b']' * 5000),
        ('cobot/v1/r1/status', b'{"state": ' + b'{"a":' * 3000 + b'1' + b'}' * 3001),
        ('cobot/v1/orders', b'{"schema": "' + ORDERS_SCHEMA.encode() + b'", "tasks": [], '
         b'"n": ' + b'9' * 5000 + b'}'),
        ('cobot/v1/orders', json.dumps(order(task('big', duration_s=1e300))).encode()),
        ('cobot/v1/r1/events/task_progress', b'\xff\xfe'),
    ]
    for topic, payload in poison:
        say(planner, topic, payload)
    say(planner, 'cobot/v1/r1/status', b'{"state": "online"}')
    planner.add_orders(order(task('fine')), now_s=1000.0)
    planner.step(now_s=1000.0)
    planner.step(now_s=1001.0)
    assert planner.task_status()['fine']['status'] == 'open'
    assert 'fine' in planner.missions()['r1']['tasks']
    assert 'big' in planner.rejected_tasks and '<order>' in planner.rejected_tasks
    assert 'big' not in planner.task_status()
    # status and progress refused; telemetry with its seq in the user properties is only
    # de-duplicated (its payload is never parsed, so it cannot hurt)
    assert planner.fleet.counts['rejected'] >= 2 and planner.errors == {}


def test_retained_orders_and_events_are_ignored(planner: PlannerService) -> None:
    say(planner, 'cobot/v1/orders', json.dumps(order(task('kept'))).encode(), retained=True)
    planner.step(now_s=1000.0)
    assert 'kept' not in planner.task_status()
    assert 'retained' in planner.rejected_tasks['<order>']


def progress(planner: PlannerService, robot: str, task_id: str, status: str,
             mission: dict) -> bytes:
    body = progress_to_json(TaskProgress(mission['mission_id'], mission['version'], task_id,
                                         status, 1000.0))
    return build_envelope(robot, next(_seq), 1000.0, 'task_progress', 'x', body)


def test_only_the_assigned_robot_can_report_a_task(planner: PlannerService) -> None:
    for robot in ('r1', 'r2'):
        say(planner, f'cobot/v1/{robot}/status', b'{"state": "online"}')
    planner.add_orders(order(task('only-r1', capability='pick', station='a'),
                             task('other', capability='place', station='c')), now_s=1000.0)
    planner.step(now_s=1000.0)
    missions = planner.missions()
    owner = next(r for r, m in missions.items() if 'only-r1' in m['tasks'])
    intruder = 'r2' if owner == 'r1' else 'r1'
    say(planner, f'cobot/v1/{intruder}/events/task_progress',
        progress(planner, intruder, 'only-r1', 'done', missions.get(intruder, missions[owner])))
    planner.step(now_s=1001.0)
    assert planner.task_status()['only-r1']['status'] == 'open'
    assert planner.progress_unauthorized == 1
    say(planner, f'cobot/v1/{owner}/events/task_progress',
        progress(planner, owner, 'only-r1', 'done', missions[owner]))
    planner.step(now_s=1002.0)
    assert planner.task_status()['only-r1']['status'] == 'done'


def test_a_failing_plan_is_retried_later_not_fatal(planner: PlannerService,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(online: frozenset[str], now: float, *limits: float) -> None:
        calls.append(now)
        raise RuntimeError('solver bug')

    say(planner, 'cobot/v1/r1/status', b'{"state": "online"}')
    planner.add_orders(order(task('t')), now_s=1000.0)
    monkeypatch.setattr(planner.issuer, 'replan', broken)
    planner.step(now_s=1000.0)
    planner.step(now_s=1001.0)            # within the retry delay: not again
    assert calls == [1000.0] and planner.errors['plan'] == 1
    monkeypatch.undo()
    say(planner, 'cobot/v1/r1/status', b'{"state": "online"}')
    planner.step(now_s=1011.0)
    assert 't' in planner.missions()['r1']['tasks']


def test_the_rejected_task_list_stays_bounded(planner: PlannerService) -> None:
    for i in range(3):
        planner.add_orders(order(*[task(f'x{i}-{j}', station='nowhere') for j in range(600)]))
    assert len(planner.rejected_tasks) == 1000


@pytest.mark.parametrize('step_s', [2 * 86400.0, -300.0])
def test_a_wall_clock_step_keeps_liveness_and_tasks_in_progress(tmp_path: Path,
                                                               step_s: float) -> None:
    clock = SteppableClock(wall_s=1_800_000_000.0)
    service = PlannerService(PlannerConfig(data_dir=tmp_path, plan_time_limit_s=0.2,
                                           offline_after_s=10.0), SITE,
                             Ed25519PrivateKey.generate(), clock=clock)
    try:
        say(service, 'cobot/v1/r1/status', b'{"state": "online"}')
        service.add_orders(order(task('work', duration_s=600)))
        service.step()
        mission = service.missions()['r1']
        say(service, 'cobot/v1/r1/events/task_progress',
            progress(service, 'r1', 'work', 'started', mission))
        clock.advance(1.0)
        service.step()
        assert service.task_status()['work']['status'] == 'in_progress'
        clock.step_wall(step_s)          # NTP, between two steps of the planner
        clock.advance(1.0)
        service.step()
        assert service.clock_steps == 1
        assert service.online() == frozenset({'r1'})
        assert service.task_status()['work']['status'] == 'in_progress'
        clock.advance(10.0)              # real silence still takes the robot offline
        service.step()
        assert service.online() == frozenset()
        assert service.task_status()['work']['status'] == 'open'
    finally:
        service.stop()


def test_a_failure_gives_up_a_1500_task_chain_at_once(planner: PlannerService) -> None:
    say(planner, 'cobot/v1/r1/status', b'{"state": "online"}')
    chain = [task('c0')] + [task(f'c{i}', after=[f'c{i - 1}']) for i in range(1, 1500)]
    planner.add_orders(order(*chain), now_s=1000.0)
    planner.step(now_s=1000.0)
    mission = planner.missions()['r1']
    for attempt in range(planner.cfg.max_task_failures):
        say(planner, 'cobot/v1/r1/status', b'{"state": "online"}')
        say(planner, 'cobot/v1/r1/events/task_progress',
            progress(planner, 'r1', 'c0', 'failed', planner.missions()['r1']))
        planner.step(now_s=1001.0 + attempt)
    status = planner.task_status()
    assert {s['status'] for s in status.values()} == {'failed'}, mission
    assert planner.errors == {}


def test_nothing_new_may_come_after_a_failed_task(planner: PlannerService) -> None:
    say(planner, 'cobot/v1/r1/status', b'{"state": "online"}')
    planner.add_orders(order(task('weld')), now_s=1000.0)
    planner.step(now_s=1000.0)
    for attempt in range(planner.cfg.max_task_failures):
        say(planner, 'cobot/v1/r1/status', b'{"state": "online"}')
        say(planner, 'cobot/v1/r1/events/task_progress',
            progress(planner, 'r1', 'weld', 'failed', planner.missions()['r1']))
        planner.step(now_s=1001.0 + attempt)
    assert planner.task_status()['weld']['status'] == 'failed'
    assert planner.add_orders(order(task('paint', after=['weld'])), now_s=1010.0) == []
    assert 'failed' in planner.rejected_tasks['paint']


def test_a_robot_back_from_offline_cannot_report_a_task_that_moved(tmp_path: Path) -> None:
    clock = SteppableClock(wall_s=1_800_000_000.0)
    planner = PlannerService(PlannerConfig(data_dir=tmp_path, plan_time_limit_s=0.2,
                                           offline_after_s=5.0), SITE,
                             Ed25519PrivateKey.generate(), clock=clock)
    try:
        for robot in ('r1', 'r2'):
            say(planner, f'cobot/v1/{robot}/status', b'{"state": "online"}')
        planner.add_orders(order(task('T', station='a')))
        planner.step()
        first = next(r for r, m in planner.missions().items() if 'T' in m['tasks'])
        other = 'r2' if first == 'r1' else 'r1'
        stale = planner.missions()[first]
        say(planner, f'cobot/v1/{first}/events/task_progress',
            progress(planner, first, 'T', 'started', stale))
        clock.advance(1.0)
        planner.step()
        for _ in range(8):                    # the first robot falls silent; the other lives
            clock.advance(1.0)
            say(planner, f'cobot/v1/{other}/status', b'{"state": "online"}')
            planner.step()
        assert 'T' in planner.missions()[other]['tasks']
        assert 'T' not in planner.missions()[first]['tasks']
        say(planner, f'cobot/v1/{other}/events/task_progress',
            progress(planner, other, 'T', 'started', planner.missions()[other]))
        clock.advance(1.0)
        planner.step()
        # The first robot comes back and reports its old task failed: ignored.
        say(planner, f'cobot/v1/{first}/status', b'{"state": "online"}')
        say(planner, f'cobot/v1/{first}/events/task_progress',
            progress(planner, first, 'T', 'failed', stale))
        clock.advance(1.0)
        planner.step()
        status = planner.task_status()['T']
        assert (status['status'], status['robot_id'], status['failures']) == \
            ('in_progress', other, 0)
        assert planner.progress_unauthorized == 1
    finally:
        planner.stop()


def test_a_store_that_cannot_commit_keeps_the_messages_and_the_loop_going(
        planner: PlannerService, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    real = planner.fleet.ingest_many
    failing = [True]

    def full(batch: object, now_s: float | None = None) -> list[str]:
        if failing[0]:
            raise sqlite3.OperationalError('database or disk is full')
        return real(batch, now_s)   # type: ignore[arg-type]

    monkeypatch.setattr(planner.fleet, 'ingest_many', full)
    say(planner, 'cobot/v1/r1/status', b'{"state": "online"}')
    planner.receive('cobot/v1/r1/telemetry/x', b'{}', {'seq': '77'})
    planner.step(now_s=1000.0)                   # does not raise
    assert planner.errors['store'] == 1 and len(planner._inbox) == 2
    failing[0] = False
    planner.step(now_s=1000.5)                   # backing off: still kept
    assert len(planner._inbox) == 2
    planner.step(now_s=1001.5)
    assert len(planner._inbox) == 0 and planner.fleet.counts['accepted'] == 1
    assert planner.online() == frozenset({'r1'})


def test_a_bad_ledger_snapshot_keeps_the_local_ledger_whole(planner: PlannerService) -> None:
    from cobot_hybrid_planner.replica import FleetReplica

    planner.add_orders(order(task('local')), now_s=1000.0)
    replica = FleetReplica('f', 'p1', '127.0.0.1', 1)
    columns = ('task_id', 'body', 'status', 'received_at', 'robot_id', 'started_at',
               'ended_at', 'failures', 'reason')
    row = dict(zip(columns, ('dup', '{}', 'open', 0, None, None, None, 0, ''), strict=True))
    replica.snapshot = json.dumps({'fleet': '', 'epoch': 5, 'tasks': [row, row],
                                   'missions': []}).encode()
    planner.replica = replica
    planner._adopt_snapshot()
    assert set(planner.task_status()) == {'local'} and planner.errors['snapshot'] == 1


def test_a_replica_acknowledges_storage_only_once_the_next_owner_can_see_it(
        planner: PlannerService) -> None:
    """A delivery ack must not leave before the ledger snapshot holding its effect."""

    class Info:
        published = False

        def is_published(self) -> bool:
            return self.published

    class Lease:
        is_owner = True
        epoch = 1

    class Replica:
        lease = Lease()
        snapshot = None
        infos: list[Info] = []

        def tick(self, now: float) -> tuple[bool, bool]:
            return False, False

        def publish_snapshot(self, payload: bytes) -> Info:
            self.infos.append(Info())
            return self.infos[-1]

        def stop(self) -> None:
            pass

    def sent() -> list[str]:
        return [m.topic for m in planner.transport.published]   # type: ignore[union-attr]

    planner.replica = Replica()  # type: ignore[assignment]
    say(planner, 'cobot/v1/r1/status', b'{"state": "online"}')
    planner.add_orders(order(task('t')), now_s=1000.0)
    planner.step(now_s=1000.0)
    mission = planner.missions()['r1']
    say(planner, 'cobot/v1/r1/events/task_progress',
        progress(planner, 'r1', 't', 'done', mission))
    planner._acks_at = planner._snapshot_at = 0.0
    planner.step(now_s=1001.0)
    assert planner.task_status()['t']['status'] == 'done'
    assert 'cobot/v1/r1/delivered' not in sent()        # the snapshot is not on the broker yet
    assert 'cobot/v1/r1/cmd/mission' in sent()          # (what was published is visible)
    for info in Replica.infos:
        info.published = True
    planner.step(now_s=1002.0)
    assert 'cobot/v1/r1/delivered' in sent()
