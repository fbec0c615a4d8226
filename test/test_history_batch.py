"""The fleet history (SQLite today, Parquet days) and the resumable batch report."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cobot_hybrid_planner.offload.batch_report import BatchJob, Prices, robot_day
from cobot_hybrid_planner.offload.history import HistoryRecorder, HistoryRow, HistoryStore
from cobot_hybrid_planner.offload.history_sim import FleetSim
from cobot_hybrid_protocol.envelope import CONTRACT_TYPES, build_envelope
from cobot_hybrid_protocol.snapshot import SNAPSHOT_TYPE, build_snapshot
from cobot_hybrid_protocol.status import status_payload
from cobot_hybrid_protocol.transport import MemoryBroker

# The fleet week's report runs in subprocesses on both cores: beside the other heavy tests
# (the edge stack brought up against a deadline) it would starve them.
pytestmark = pytest.mark.xdist_group('whole_machine')

DAY0 = 1_795_392_000.0            # 2026-11-23 00:00 UTC
FIRST, LAST = '2026-11-23', '2026-11-29'
CLI = [sys.executable, '-m', 'cobot_hybrid_cli']


@pytest.fixture(scope='module')
def fleet_week(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A made-up week of a 20-robot fleet in two sites, through the real store."""
    root = tmp_path_factory.mktemp('history')
    sites = root / 'sites.yaml'
    subprocess.run([*CLI, 'history', 'generate', '--data-dir', str(root / 'h'),
                    '--period-s', '60', '--sites-out', str(sites)], check=True,
                   capture_output=True, timeout=300)
    return root / 'h', sites


def report(history: Path, out: Path, sites: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CLI, 'history', 'report', '--data-dir', str(history),
                             '--first', FIRST, '--last', LAST, '--out', str(out),
                             '--sites', str(sites)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def test_a_week_of_a_20_robot_fleet_gives_the_report(fleet_week: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    history, sites = fleet_week
    proc = report(history, tmp_path / 'r', sites)
    output = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, output
    assert '140 robot-days (0 from checkpoints, 140 computed)' in output
    data = json.loads((tmp_path / 'r' / 'report.json').read_text())
    assert len(data['robot_days']) == 140 and len(data['site_days']) == 14
    assert {r['site'] for r in data['site_days']} == {'site-1', 'site-2'}
    week = {g: sum(r['stopped_s'][g] for r in data['robot_days'])
            for g in ('people', 'stale_perception', 'fault', 'unknown')}
    assert week['people'] > week['stale_perception'] > 0 and week['fault'] > 0
    assert week['unknown'] == 0
    assert sum(r['near_misses'] for r in data['robot_days']) > 0
    assert sum(r['outages'] for r in data['robot_days']) > 0
    assert all(r['tasks_done'] > 50 for r in data['robot_days'])
    site2 = {r['day']: r['models'] for r in data['site_days'] if r['site'] == 'site-2'}
    assert site2['2026-11-25'] == ['yolo11n-pose v3']
    assert site2['2026-11-26'] == ['yolo11n-pose v4']       # the site moved to v4
    one = data['robot_days'][0]
    assert one['raw_camera_bytes'] > 10_000 * one['bytes_up'] > 0
    assert one['cost_usd']['raw_stream'] > 100 * one['cost_usd']['link']
    page = (tmp_path / 'r' / 'report.html').read_text()
    assert page.count('<svg') == 3 and 'Time stopped by cause' in page
    assert '<script' not in page and 'src="http' not in page \
        and 'href="http' not in page                        # nothing fetched


def test_a_run_killed_half_way_resumes_and_gives_the_same_report(
        fleet_week: tuple[Path, Path], tmp_path: Path) -> None:
    history, sites = fleet_week
    whole = report(history, tmp_path / 'whole', sites)
    assert whole.wait(300) == 0
    killed = report(history, tmp_path / 'resumed', sites)
    done = tmp_path / 'resumed' / 'checkpoints'
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(done.glob('*/*.json'))) < 20:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)                     # preempted
    killed.wait(30)
    taken = len(list(done.glob('*/*.json')))
    assert 20 <= taken < 140 and not (tmp_path / 'resumed' / 'report.html').exists()
    again = report(history, tmp_path / 'resumed', sites)
    output = again.communicate(timeout=300)[0].decode()
    assert again.returncode == 0, output
    assert f'({taken} from checkpoints, {140 - taken} computed)' in output
    for name in ('report.html', 'report.json'):
        assert (tmp_path / 'resumed' / name).read_bytes() == \
            (tmp_path / 'whole' / name).read_bytes(), name


def test_a_torn_checkpoint_and_a_changed_day_are_done_again(fleet_week: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    history, sites = fleet_week
    copy = tmp_path / 'h'
    subprocess.run(['cp', '-r', str(history), str(copy)], check=True)
    out = tmp_path / 'r'
    job = BatchJob(copy, out, FIRST, LAST)
    first = job.run()
    torn = out / 'checkpoints' / '2026-11-24' / 'cobot-05.json'
    torn.write_text(torn.read_text()[:100])
    edited = out / 'checkpoints' / '2026-11-25' / 'cobot-06.json'
    body = json.loads(edited.read_text())
    body['metrics']['near_misses'] += 1000                    # edited by hand
    edited.write_text(json.dumps(body))
    store = HistoryStore(copy)                               # a late row for 2026-11-27
    store.add([HistoryRow('cobot-01', 'events/task_progress', 999_999, DAY0 + 4 * 86400 + 7200,
                          DAY0 + 9 * 86400, 200, {'status': 'done'})])
    store.seal(DAY0 + 10 * 86400)
    store.close()
    again = BatchJob(copy, out, FIRST, LAST)
    second = again.run()
    assert again.computed == 2 + 20 and again.resumed == 140 - 22
    cell = {(r['day'], r['robot_id']): r for r in second['robot_days']}
    before = {(r['day'], r['robot_id']): r for r in first['robot_days']}
    assert cell[('2026-11-25', 'cobot-06')] == before[('2026-11-25', 'cobot-06')]
    assert cell[('2026-11-27', 'cobot-01')]['tasks_done'] == \
        before[('2026-11-27', 'cobot-01')]['tasks_done'] + 1


def _rows(*rows: tuple[str, float, dict[str, Any]]) -> list[tuple[str, float, float, int,
                                                                 dict[str, Any]]]:
    return [(kind, DAY0 + t, DAY0 + t, 100, data) for kind, t, data in rows]


def _state(state: str, cause: str, closest: Any = 'inf', required: float = 1.0
           ) -> dict[str, Any]:
    return {'state': state, 'cause': cause, 'closest_distance_m': closest,
            'required_separation_m': required}


def test_a_robot_day_by_hand() -> None:
    rows = _rows(
        ('status', 0, {'state': 'online'}),
        ('events/safety_state', 10, _state('SLOW', 'person', 1.5)),
        ('events/safety_state', 20, _state('PROTECTIVE_STOP', 'person', 0.4)),   # near miss
        ('events/safety_state', 50, _state('RUN', 'clear')),
        ('events/safety_state', 100, _state('PROTECTIVE_STOP', 'person', 0.8)),  # inside S_p
        ('events/safety_state', 105, _state('PROTECTIVE_STOP', 'holding')),      # same stop
        ('events/safety_state', 110, _state('RUN', 'clear')),
        ('events/safety_state', 200, _state('PROTECTIVE_STOP', 'stale_perception')),
        ('events/safety_state', 260, _state('SLOW', 'recovering')),
        ('status', 300, {'state': 'offline'}),
        ('telemetry/bridge', 350, {'backlog_messages': 42, 'backlog_bytes': 9000}),
        ('status', 400, {'state': 'online'}),
        ('events/task_progress', 410, {'status': 'done'}),
        ('events/task_progress', 420, {'status': 'failed'}),
        ('events/model_metrics', 430, {'model': {'name': 'm', 'version': 3}}),
        ('events/safety_state', 500, _state('PROTECTIVE_STOP', 'fault')),
        ('events/protective_stop', 500, {'data': True}),   # beside states: not counted twice
        ('status', 600, {'state': 'offline'}))
    day = robot_day(rows, DAY0 + 86400, Prices(camera_fps=1.0, camera_width=10,
                                                camera_height=10))
    assert day['stopped_s'] == {'people': 40.0, 'stale_perception': 60.0, 'fault': 100.0,
                                'unknown': 0.0}
    assert day['stops'] == {'people': 2, 'stale_perception': 1, 'fault': 1, 'unknown': 0}
    assert day['near_misses'] == 1 and day['min_separation_m'] == 0.4
    assert day['min_separation_ratio'] == 0.4
    assert (day['outages'], day['outage_s'], day['online_s']) == (1, 100.0, 500.0)
    assert day['queue_peak_messages'] == 42 and day['queue_peak_bytes'] == 9000
    assert (day['tasks_done'], day['tasks_failed'], day['models']) == (1, 1, ['m v3'])
    assert day['raw_camera_bytes'] == 500 * 300 and day['bytes_up'] == 1800


def test_stop_events_before_the_first_monitor_state_are_not_counted_twice() -> None:
    rows = _rows(('events/protective_stop', 1, {'data': True}),      # the monitor starts stopped
                 ('events/safety_state', 2, _state('PROTECTIVE_STOP', 'no_perception')),
                 ('events/protective_stop', 9, {'data': False}),
                 ('events/safety_state', 9, _state('RUN', 'clear')),
                 ('status', 100, {'state': 'offline'}))
    day = robot_day(rows, DAY0 + 86400, Prices())
    assert day['stopped_s'] == {'people': 0.0, 'stale_perception': 7.0, 'fault': 0.0,
                                'unknown': 0.0}


def test_a_robot_without_monitor_states_counts_its_stops_as_unknown() -> None:
    rows = _rows(('events/protective_stop', 10, {'data': True}),
                 ('events/protective_stop', 12, {'data': True}),
                 ('events/protective_stop', 40, {'data': False}),
                 ('events/safety_state', 41, {'state': 7, 'closest_distance_m': [1]}),  # junk
                 ('events/protective_stop', 50, {'data': 'yes'}))
    day = robot_day(rows, DAY0 + 86400, Prices())
    assert day['stopped_s']['unknown'] == 30.0 and day['stops']['unknown'] == 1
    assert day['min_separation_m'] is None


def test_the_store_keeps_what_the_contract_allows_once(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / 'h')
    t = DAY0 + 3600
    env = build_envelope('cobot-1', 5, t, 'task_progress', CONTRACT_TYPES['task_progress'],
                         {'status': 'done'})
    topic = 'cobot/v1/cobot-1/events/task_progress'
    assert store.record(topic, env, False, t + 1) == 'stored'
    assert store.record(topic, env, False, t + 2) == 'duplicate'
    jpeg = b'\xff\xd8\xff' + b'j' * 5000
    snap = build_snapshot(build_envelope('cobot-1', 6, t, 'image', SNAPSHOT_TYPE, {
        'image': {'width': 2, 'height': 2, 'frame_id': '', 'stamp': t, 'bytes': len(jpeg)},
        'trigger': {'topic': 'protective_stop', 'field': 'data', 'value': True, 'stamp': t},
        'context': {}}), jpeg)
    assert store.record('cobot/v1/cobot-1/events/stop_snapshot', snap, False, t) == 'stored'
    assert store.record('cobot/v1/cobot-1/status', status_payload('offline', t - 999),
                        True, t + 5) == 'stored'
    for topic_, payload, retained, why in (
            (topic, env, True, 'retained'),
            ('cobot/v1/cobot-2/events/task_progress', env, False, 'cobot-2'),
            (topic, b'{"robot_id": 1}', False, 'exactly the fields'),
            (topic, b'\x00\x01 cdr', False, 'not an envelope'),
            ('cobot/v1/planners/f/lease', b'{}', False, None),
            ('cobot/v1/cobot-1/status', b'{"state": "gone"}', False, 'status')):
        outcome = store.record(topic_, payload, retained, t)
        assert (outcome == 'ignored') if why is None else (why in outcome), (why, outcome)
    store.seal(DAY0 + 86400 + 10)
    assert store.days() == [FIRST]
    import duckdb

    rows = duckdb.sql(f"SELECT kind, seq, stamp, bytes, data FROM read_parquet("
                      f"'{store.partition(FIRST)}') ORDER BY kind").fetchall()
    kinds = {r[0]: r for r in rows}
    assert set(kinds) == {'events/task_progress', 'events/stop_snapshot', 'status'}
    assert kinds['events/stop_snapshot'][3] == len(snap)       # bytes as sent, JPEG included
    assert 'jjjj' not in kinds['events/stop_snapshot'][4]      # the JPEG itself is not kept
    assert kinds['status'][2] == t + 5                          # a will: the cloud's time
    store.close()


def test_late_rows_merge_into_their_day_and_old_days_expire(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / 'h', retention_days=3)
    row = HistoryRow('cobot-1', 'events/x', 1, DAY0 + 100, DAY0 + 100, 10, {})
    store.add([row])
    store.seal(DAY0 + 86400)
    store.add([row, HistoryRow('cobot-1', 'events/x', 2, DAY0 + 200, DAY0 + 2 * 86400, 10,
                               {})])                        # one again, one late
    store.seal(DAY0 + 2 * 86400)
    import pyarrow.parquet as pq

    assert pq.read_table(store.partition(FIRST)).column('seq').to_pylist() == [1, 2]
    store.partition(FIRST).write_bytes(b'PAR1 torn')
    store.add([HistoryRow('cobot-1', 'events/x', 3, DAY0 + 300, DAY0 + 3 * 86400, 10, {})])
    store.seal(DAY0 + 3 * 86400)                              # an unreadable day moves aside
    assert store.refused['unreadable_partition'] == 1
    assert list((tmp_path / 'h' / f'day={FIRST}').glob('history.parquet.unreadable-*'))
    assert store.expire(DAY0 + 5 * 86400) == [FIRST]
    assert store.days() == []
    store.close()


def test_the_recorder_stores_the_fleet_uplink_and_seals_the_day(tmp_path: Path) -> None:
    broker = MemoryBroker()
    clock = [DAY0 + 3600]
    store = HistoryStore(tmp_path / 'h')
    recorder = HistoryRecorder(store, broker.transport('history'), lambda: clock[0], 60)
    recorder.start()
    robot = broker.transport('cobot-3')
    robot.connect([], lambda m: None)
    for seq in range(1, 4):
        robot.publish('cobot/v1/cobot-3/telemetry/bridge', build_envelope(
            'cobot-3', seq, clock[0], 'bridge', CONTRACT_TYPES['bridge'],
            {'backlog_messages': seq}))
    robot.publish('cobot/v1/cobot-3/state', b'{}')             # the fleet store's, not here
    robot.publish('cobot/v1/cobot-3/events/x', b'[' * 5000)     # junk: counted, loop goes on
    assert store.stats()['hot_rows'] == 3 and store.refused
    clock[0] = DAY0 + 86400 + 5
    recorder.tick()
    assert recorder.sealed == [FIRST] and store.stats()['hot_rows'] == 0
    store.close()


def test_prices_are_checked() -> None:
    from cobot_hybrid_planner.offload.batch_report import BatchError

    with pytest.raises(BatchError, match='per_gb_up'):
        Prices(per_gb_up=-1.0)
    assert math.isclose(FleetSim().robots, 20)


def test_a_robot_clock_far_off_files_its_rows_under_the_clouds_day(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / 'h', retention_days=30)
    now = DAY0 + 3600
    store.add([HistoryRow('cobot-1', 'events/x', 1, 10.0, now, 10, {}),            # 1970
               HistoryRow('cobot-1', 'events/x', 2, 3_900_000_000.0, now, 10, {}),  # 2093
               HistoryRow('cobot-1', 'events/x', 3, now - 3 * 86400, now, 10, {})])  # late
    assert store.refused['clock_off'] == 2
    store.seal(DAY0 + 86400)
    assert store.days() == ['2026-11-20', FIRST]   # the late backlog keeps its own day
    store.close()
