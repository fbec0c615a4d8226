"""Two ``cobot-hybrid worker run`` replicas, a real mosquitto, the real snapshot job.

Snapshots in the bridge's format (:mod:`cobot_hybrid_protocol.snapshot`) of real photos go
up as robots send them; the replicas split them through the shared subscription; one replica
is killed in the middle of a job, and the other finishes it after its lease. Every snapshot
has exactly one result.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import paho.mqtt.client as mqtt
import pytest

from cobot_hybrid_perception.media import load_image, sample_photo_path
from cobot_hybrid_protocol.envelope import build_envelope
from cobot_hybrid_protocol.snapshot import SNAPSHOT_TYPE, build_snapshot
from cobot_hybrid_protocol.topics import worker_status_topic

pytestmark = pytest.mark.xdist_group('whole_machine')   # lease times against the wall clock
PHOTOS = ('bus', 'zidane', 'astronaut', 'coffee', 'camera')


def snapshot(robot: str, seq: int, photo: str) -> bytes:
    ok, jpeg = cv2.imencode('.jpg', load_image(sample_photo_path(photo)))
    assert ok
    image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    now = time.time()
    data = {'image': {'width': image.shape[1], 'height': image.shape[0], 'frame_id': 'cam',
                      'stamp': now, 'bytes': len(jpeg)},
            'trigger': {'topic': 'protective_stop', 'field': 'data', 'value': True,
                        'stamp': now},
            'context': {'detections': {'stamp': now, 'data': {'detections': []}}}}  # saw nobody
    return build_snapshot(build_envelope(robot, seq, now, 'image', SNAPSHOT_TYPE, data),
                          jpeg.tobytes())


def replica(name: str, port: int, data: Path, log: Path, *options: str) -> subprocess.Popen:
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen(
        [sys.executable, '-m', 'cobot_hybrid_cli', 'worker', 'run', '--broker-port', str(port),
         '--data-dir', str(data), '--worker-id', name, '--group', 'cell-a', '--lease-s', '4',
         '--status-period-s', '0.5', '--option', 'snapshot.threads=1', *options],
        stdout=log.open('w'), stderr=subprocess.STDOUT, env=env)


def rows(db: Path, query: str) -> list[tuple[Any, ...]]:
    if not db.is_file():
        return []
    with sqlite3.connect(f'file:{db}?mode=ro', uri=True, timeout=10) as conn:
        return conn.execute(query).fetchall()


def wait(what: Any, timeout: float, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError('timed out; logs:\n' + '\n'.join(
        p.read_text(errors='replace')[-3000:] for p in logs if p.is_file()))


def test_two_replicas_split_the_snapshots_and_a_killed_ones_job_is_redone(
        mosquitto_broker: Any, tmp_path: Path) -> None:
    data, db = tmp_path / 'group', tmp_path / 'group' / 'ledger.db'
    logs = [tmp_path / 'a.log', tmp_path / 'b.log']
    # A is slow (four passes at 1280), so it is surely in the middle of a job when killed.
    a = replica('worker-a', mosquitto_broker.port, data, logs[0],
                '--option', 'snapshot.sizes=1280,1280,1280,1280')
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        metrics_port = probe.getsockname()[1]
    b = replica('worker-b', mosquitto_broker.port, data, logs[1],
                '--option', 'snapshot.sizes=640', '--option', 'snapshot.tta=false',
                '--metrics-port', str(metrics_port))
    robot = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='cobot-7',
                        protocol=mqtt.MQTTv5)
    statuses: list[dict[str, Any]] = []
    robot.on_message = lambda c, u, m: statuses.append(json.loads(m.payload))
    try:
        wait(lambda: all(
            'worker' in p.read_text(errors='replace') for p in logs if p.is_file())
            and len([p for p in logs if p.is_file()]) == 2, 60, logs)
        wait(lambda: len(rows(db, 'SELECT 1 FROM jobs')) == 0 and db.is_file(), 30, logs)
        time.sleep(1.0)   # both subscribed (the status below proves it for each)
        robot.connect('127.0.0.1', mosquitto_broker.port)
        robot.loop_start()
        robot.subscribe(worker_status_topic('cell-a'), qos=1)
        wait(lambda: {s['worker'] for s in statuses} >= {'worker-a', 'worker-b'}, 60, logs)
        sent = []
        for seq in range(1, 11):
            payload = snapshot('cobot-7', seq, PHOTOS[seq % len(PHOTOS)])
            robot.publish('cobot/v1/cobot-7/events/stop_snapshot', payload,
                          qos=1).wait_for_publish(10)
            sent.append(seq)
        robot.publish('cobot/v1/cobot-7/events/stop_snapshot',
                      snapshot('cobot-7', 3, 'bus'), qos=1).wait_for_publish(10)  # again
        wait(lambda: len(rows(db, 'SELECT 1 FROM jobs')) == 10, 60, logs)
        owners = wait(lambda: rows(db, "SELECT seq FROM jobs WHERE state = 'running' AND "
                                       "owner = 'worker-a'"), 60, logs)
        killed_seq = owners[0][0]
        a.send_signal(signal.SIGKILL)                  # in the middle of that job
        a.wait(10)
        time.sleep(0.5)
        for seq in range(11, 15):   # sent after the kill: a dead replica takes no share
            robot.publish('cobot/v1/cobot-7/events/stop_snapshot',
                          snapshot('cobot-7', seq, 'coffee'), qos=1).wait_for_publish(10)
            sent.append(seq)
        done = wait(lambda: (r := rows(db, 'SELECT seq, worker, attempts FROM results'))
                    and len(r) == 14 and r, 240, logs)
        by_seq = {seq: (worker, attempts) for seq, worker, attempts in done}
        assert sorted(by_seq) == sent                   # each snapshot exactly once
        assert by_seq[killed_seq] == ('worker-b', 2)    # redone by the other replica
        takers = {o for (o,) in rows(db, 'SELECT taken_by FROM jobs')}
        assert takers == {'worker-a', 'worker-b'}        # the group split the uploads
        results = [json.loads(r[0]) for r in rows(db, 'SELECT result FROM results')]
        assert all(len(r['detections']) >= 0 and 'similar' in r for r in results)
        assert {r['verdict'] for r in results} >= {'edge_missed_people', 'agree'}
        assert not {r['verdict'] for r in results} & {'no_edge_context'}
        counters = dict(rows(db, 'SELECT name, value FROM counters'))
        assert counters.get('duplicates', 0) == 1
        wait(lambda: any(s['worker'] == 'worker-b' and s['done'] == 14 and s['backlog'] == 0
                         for s in statuses), 30, logs)
        final = [s for s in statuses if s['worker'] == 'worker-b'][-1]
        assert final['latency_p99_s'] > 0 and final['vectors'] == 14
        base = f'http://127.0.0.1:{metrics_port}'
        with urllib.request.urlopen(f'{base}/status', timeout=10) as answer:
            assert json.loads(answer.read())['backlog'] == 0     # what KEDA reads
        with urllib.request.urlopen(f'{base}/metrics', timeout=10) as answer:
            assert 'cobot_worker_done{group="cell-a"} 14' in answer.read().decode()
    finally:
        robot.loop_stop()
        robot.disconnect()
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (a, b):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert b.returncode == 0, logs[1].read_text()[-2000:]
