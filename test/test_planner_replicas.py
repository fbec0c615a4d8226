"""Two planner replicas behind one mosquitto: one owns the fleet; kill it, the other takes over.

Real processes (``cobot-hybrid serve --fleet``), a real broker, and the robot's real bridge core
(durable queue, MQTT link, signature check) in this process. Work orders come in through the
shared subscription; the ledger and the fleet's MQTT session carry over to the new owner, and
its missions (a higher lease epoch in the version) supersede the dead owner's on the robot.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from cobot_hybrid_bridge.bridge import EdgeBridge
from cobot_hybrid_bridge.bridge_config import BridgeConfig
from cobot_hybrid_planner.orders import ORDERS_SCHEMA
from cobot_hybrid_planner.service import EPOCH_STRIDE
from cobot_hybrid_protocol.mission import Mission, TaskProgress, progress_to_json

# A 2 s lease measured against wall time: run beside nothing heavy (the fleet and demo tests).
pytestmark = [pytest.mark.broker, pytest.mark.xdist_group('whole_machine')]

SITE = {'stations': {'press': {'x': 0, 'y': 0}, 'tray': {'x': 3, 'y': 4}},
        'robots': {'cobot-a': {'capabilities': ['pick'], 'start': 'tray'}}}


def order(order_id: str, *task_ids: str) -> bytes:
    return json.dumps({'schema': ORDERS_SCHEMA, 'order_id': order_id, 'tasks': [
        {'task_id': t, 'type': 'pick', 'station': 'press', 'capability': 'pick',
         'duration_s': 60} for t in task_ids]}).encode()


class Watcher:
    """The retained lease and ledger of the fleet, and a work order publisher (the MES)."""

    def __init__(self, port: int) -> None:
        self.lease: dict[str, Any] = {}
        self.ledger: dict[str, Any] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='mes',
                                  protocol=mqtt.MQTTv5)
        # Not the orders topic of the fleet: its owner's session must be its only subscriber.
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(
            [('cobot/v1/planners/+/lease', 1), ('cobot/v1/planners/+/ledger', 1)])
        self.client.on_message = self._on_message
        self.client.connect('127.0.0.1', port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic.endswith('/lease'):
            self.lease = json.loads(message.payload)
        elif message.topic.endswith('/ledger'):
            self.ledger = json.loads(message.payload)

    def task(self, task_id: str) -> str | None:
        return next((t['status'] for t in self.ledger.get('tasks', [])
                     if t['task_id'] == task_id), None)

    def send(self, payload: bytes) -> None:
        self.client.publish('cobot/v1/orders', payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_for(predicate: Callable[[], Any], timeout_s: float, robot: EdgeBridge,
             missions: list[Mission], what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        robot.tick()
        missions.extend(robot.take_commands())
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f'timed out waiting for {what()}')


def test_a_killed_owner_is_replaced_and_nothing_is_lost(tmp_path: Path,
                                                        mosquitto_broker: Any) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / 'planner.pem').write_bytes(key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (tmp_path / 'planner.pub').write_bytes(key.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / 'site.yaml').write_text(yaml.safe_dump(SITE))
    port = mosquitto_broker.port

    def replica(name: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f'{name}.log').open('wb')
        return subprocess.Popen(
            [sys.executable, '-m', 'cobot_hybrid_cli', 'serve', '--site',
             str(tmp_path / 'site.yaml'), '--key', str(tmp_path / 'planner.pem'), '--port',
             str(port), '--replica-id', name, '--fleet', 'cell-a', '--lease-s', '2',
             '--data-dir', str(tmp_path / name), '--time-limit', '0.3'],
            stdout=log, stderr=subprocess.STDOUT)

    def logs() -> str:
        return '\n'.join(p.read_text() for p in tmp_path.glob('planner-*.log'))

    replicas = {name: replica(name) for name in ('planner-1', 'planner-2')}
    watcher = Watcher(port)
    robot = EdgeBridge(BridgeConfig(robot_id='cobot-a', broker_port=port,
                                    data_dir=str(tmp_path / 'robot'),
                                    cloud_public_keys=(f'planner={tmp_path / "planner.pub"}',),
                                    state_period_s=1.0), [])
    robot.start()
    missions: list[Mission] = []

    def wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
        wait_for(predicate, timeout_s, robot, missions,
                 lambda: f'{what}\n{logs()}\nrobot rejected {robot.rejected}')

    try:
        wait(lambda: watcher.lease.get('epoch') == 1, 20.0, 'a first owner')
        first = watcher.lease['owner']
        watcher.send(order('o-1', 'unload', 'inspect'))
        wait(lambda: missions, 20.0, 'the first mission')
        assert missions[-1].version == EPOCH_STRIDE + 1
        started = missions[-1].tasks[0].task_id
        robot.report_progress(json.dumps(progress_to_json(TaskProgress(
            missions[-1].mission_id, missions[-1].version, started, 'started', time.time()))))
        wait(lambda: watcher.task(started) == 'in_progress', 20.0,
             'the task in progress in the ledger snapshot')

        replicas[first].send_signal(signal.SIGKILL)
        replicas[first].wait(10)
        wait(lambda: watcher.lease.get('epoch') == 2, 20.0, 'a new owner')
        second = watcher.lease['owner']
        assert second != first
        # The robot finishes its task while the owner changes; a new order comes in.
        robot.report_progress(json.dumps(progress_to_json(TaskProgress(
            missions[-1].mission_id, missions[-1].version, started, 'done', time.time()))))
        watcher.send(order('o-2', 'stack'))
        wait(lambda: any(m.version > 2 * EPOCH_STRIDE and 'stack' in
                         [t.task_id for t in m.tasks] for m in missions), 30.0,
             'a mission of the new owner')
        wait(lambda: watcher.task(started) == 'done', 20.0, 'the task done in the new ledger')
        assert watcher.ledger['epoch'] == 2
        assert {t['task_id'] for t in watcher.ledger['tasks']} == {'unload', 'inspect', 'stack'}
        newest = missions[-1]
        assert started not in [t.task_id for t in newest.tasks]   # done: not sent again
        assert robot.rejected == {}, robot.rejected                 # nothing refused
    finally:
        robot.stop()
        watcher.close()
        for proc in replicas.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
