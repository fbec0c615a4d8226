"""Cloud advisories: a worker's signed verdict reaches the robot's bridge, which logs it only.

The worker (memory broker) signs an advisory for a result that says the edge was wrong; the
robot's bridge core checks it as it checks every command (key, robot, time, replay) and
keeps it for its node to show; nothing is acknowledged as a mission, and it is never a
safety input. Forged, replayed, expired, foreign and malformed ones are refused and counted.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from cobot_hybrid_bridge.bridge import EdgeBridge
from cobot_hybrid_bridge.bridge_config import BridgeConfig
from cobot_hybrid_bridge.routes import parse_routes
from cobot_hybrid_planner.offload.worker import Worker, WorkerConfig, WorkerError
from cobot_hybrid_protocol.advisory import validate_advisory
from cobot_hybrid_protocol.clock import SteppableClock
from cobot_hybrid_protocol.envelope import build_envelope
from cobot_hybrid_protocol.errors import SchemaError
from cobot_hybrid_protocol.schemas import schema
from cobot_hybrid_protocol.signing import sign_command
from cobot_hybrid_protocol.transport import MemoryBroker, Message

T0 = 1_800_000_000.0
KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / 'planner.pem', tmp_path / 'planner.pub'
    private.write_bytes(KEY.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public.write_bytes(KEY.public_key().public_bytes(Encoding.PEM,
                                                     PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture
def robot(tmp_path: Path, keys: tuple[Path, Path]) -> Any:
    clock = SteppableClock(wall_s=T0)
    cfg = BridgeConfig(robot_id='cobot-a', data_dir=str(tmp_path / 'robot'),
                       cloud_public_keys=(f'planner={keys[1]}',), state_period_s=3600.0)
    routes = parse_routes({'routes': [{'ros_topic': 'e', 'type': 'std_msgs/msg/String',
                                       'mqtt_topic': 'telemetry/e'}]})
    edge = EdgeBridge(cfg, routes, clock=clock)
    yield edge
    edge.queue.close()


RESULTS = {1: {'verdict': 'edge_missed_people', 'cloud_people': 3, 'edge_people': 1,
               'missed': [[1.0, 2.0, 30.0, 60.0], [40.0, 2.0, 70.0, 60.0]],
               'false_alarms': [], 'similar': [{'robot_id': 'cobot-b', 'seq': 9,
                                                'label': 'edge_missed_people',
                                                'similarity': 0.93}]},
           2: {'verdict': 'agree', 'cloud_people': 1, 'edge_people': 1, 'missed': [],
               'false_alarms': [], 'similar': []}}


def worker(tmp_path: Path, key: Path | None) -> tuple[Worker, MemoryBroker]:
    broker = MemoryBroker()
    cfg = WorkerConfig(data_dir=str(tmp_path / 'group'), worker_id='w-a', neighbours=0,
                       advisory_key=str(key) if key else '')
    w = Worker(cfg, broker.transport('w-a'), {'snapshot': lambda u: dict(RESULTS[u.seq])},
               lambda: T0, dim=4)
    w.start()
    return w, broker


def upload(broker: MemoryBroker, seq: int) -> None:
    sender = broker.transport(f'cobot-a-{seq}')
    sender.connect([], lambda m: None)
    sender.publish('cobot/v1/cobot-a/events/stop_snapshot',
                   build_envelope('cobot-a', seq, T0, 'image', 'x', {}) + b'\n\xff\xd8')


def run(w: Worker) -> None:
    for _ in range(3):
        w.step()
        w._pool.shutdown(wait=True)
        w._pool = type(w._pool)(1)


def test_a_wrong_edge_gets_one_signed_advisory_that_the_robot_logs(
        tmp_path: Path, keys: tuple[Path, Path], robot: EdgeBridge) -> None:
    w, broker = worker(tmp_path, keys[0])
    got: list[Message] = []
    listener = broker.transport('cobot-a')
    listener.connect([('cobot/v1/cobot-a/cmd/#', 1)], got.append)
    upload(broker, 1)
    upload(broker, 2)          # the cloud agrees: nothing to say
    upload(broker, 1)          # sent again by the robot: one job, one advisory
    run(w)
    assert len(got) == 1 and got[0].topic == 'cobot/v1/cobot-a/cmd/advisory'
    assert got[0].expiry_s == 3600 and w.advisories_sent == 1
    signed = json.loads(got[0].payload)
    jsonschema.validate(json.loads(base64.b64decode(signed['payload'])), schema('Advisory'))
    robot._on_command(got[0].topic, got[0].payload)
    assert robot.take_commands() == []                 # not a mission
    (advisory,) = robot.advisories
    assert advisory.verdict == 'edge_missed_people' and advisory.upload_seq == 1
    assert advisory.cloud_people == 3 and len(advisory.missed) == 2
    assert 'like cobot-b seq 9 (0.93)' in advisory.summary
    assert robot.stats()['commands_rejected'] == {}
    assert not robot.acks                               # no mission ack for an advisory
    robot._on_command(got[0].topic, got[0].payload)     # replayed
    robot.take_commands()
    assert robot.stats()['commands_rejected'] == {'replayed': 1} and len(robot.advisories) == 1
    w.close()


def test_without_a_key_no_advisory_goes_and_a_bad_key_is_named(tmp_path: Path) -> None:
    w, broker = worker(tmp_path, None)
    got: list[Message] = []
    listener = broker.transport('cobot-a')
    listener.connect([('cobot/v1/cobot-a/cmd/#', 1)], got.append)
    upload(broker, 1)
    run(w)
    assert got == [] and w.ledger.results()[0]['result']['verdict'] == 'edge_missed_people'
    w.close()
    bad = tmp_path / 'bad.pem'
    bad.write_text('not a key')
    with pytest.raises(WorkerError, match='advisory_key'):
        worker(tmp_path / 'other', bad)


def _signed(body: dict[str, Any], key: Ed25519PrivateKey = KEY, robot_id: str = 'cobot-a'
            ) -> bytes:
    return sign_command(key, 'planner', body, robot_id)


GOOD = {'schema': 'cobot_hybrid/advisory/v1', 'kind': 'advisory', 'command_id': 'adv-1',
        'robot_id': 'cobot-a', 'issued_at': T0, 'valid_until': T0 + 600,
        'upload': {'kind': 'events/stop_snapshot', 'seq': 4}, 'verdict': 'edge_false_alarm',
        'summary': 'the cloud found nobody', 'cloud_people': 0, 'edge_people': 1,
        'missed': [], 'false_alarms': [[1, 2, 3, 4]], 'similar': []}


@pytest.mark.parametrize(('change', 'key', 'robot_id', 'reason'), [
    ({}, Ed25519PrivateKey.generate(), 'cobot-a', 'bad_signature'),
    ({'robot_id': 'cobot-b'}, KEY, 'cobot-a', 'wrong_robot'),     # signed for us, says b
    ({}, KEY, 'cobot-b', 'bad_signature'),
    ({'valid_until': T0 - 1, 'issued_at': T0 - 100}, KEY, 'cobot-a', 'expired'),
    ({'issued_at': T0 + 999, 'valid_until': T0 + 1999}, KEY, 'cobot-a', 'not_yet_valid'),
    ({'verdict': 'stop_the_robot'}, KEY, 'cobot-a', 'schema'),
    ({'summary': 'x' * 501}, KEY, 'cobot-a', 'schema'),
    ({'missed': [[1, 2, 3]]}, KEY, 'cobot-a', 'schema'),
    ({'missed': [[0, 0, 1, 1]] * 21}, KEY, 'cobot-a', 'schema'),
    ({'similar': [{'robot_id': 'r', 'seq': 1, 'label': 'l', 'similarity': 2.0}]}, KEY,
     'cobot-a', 'schema'),
    ({'upload': {'kind': 'cmd/mission', 'seq': 1}}, KEY, 'cobot-a', 'schema'),
    ({'extra': 1}, KEY, 'cobot-a', 'schema'),
])
def test_a_bad_advisory_is_refused_and_counted(robot: EdgeBridge, change: dict[str, Any],
                                               key: Ed25519PrivateKey, robot_id: str,
                                               reason: str) -> None:
    body = {**copy.deepcopy(GOOD), **change}
    robot._on_command('cobot/v1/cobot-a/cmd/advisory', _signed(body, key, robot_id))
    assert robot.take_commands() == []
    assert robot.stats()['commands_rejected'] == {reason: 1}, robot.stats()['commands_rejected']
    assert not robot.advisories and not robot.acks


def test_a_retained_advisory_is_refused(robot: EdgeBridge) -> None:
    robot._on_command('cobot/v1/cobot-a/cmd/advisory', _signed(GOOD), retained=True)
    robot.take_commands()
    assert robot.stats()['commands_rejected'] == {'retained': 1} and not robot.advisories


def test_the_contract_checks_its_own_examples() -> None:
    advisory = validate_advisory(json.loads(json.dumps(GOOD)))
    assert advisory.false_alarms == ((1.0, 2.0, 3.0, 4.0),)
    with pytest.raises(SchemaError, match='valid_until'):
        validate_advisory({**GOOD, 'valid_until': T0})


def test_the_workers_key_signs_advisories_but_never_a_mission(tmp_path: Path) -> None:
    from cobot_hybrid_protocol.mission import MISSION_SCHEMA

    worker_key = Ed25519PrivateKey.generate()
    paths = {}
    for name, key in (('planner', KEY), ('worker', worker_key)):
        paths[name] = tmp_path / f'{name}.pub'
        paths[name].write_bytes(key.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    cfg = BridgeConfig(robot_id='cobot-a', data_dir=str(tmp_path / 'robot'),
                       cloud_public_keys=tuple(f'{n}={p}' for n, p in paths.items()),
                       advisory_key_ids=('worker',), state_period_s=3600.0)
    routes = parse_routes({'routes': [{'ros_topic': 'e', 'type': 'std_msgs/msg/String',
                                       'mqtt_topic': 'telemetry/e'}]})
    edge = EdgeBridge(cfg, routes, clock=SteppableClock(wall_s=T0))
    mission = {'schema': MISSION_SCHEMA, 'kind': 'mission', 'command_id': 'm-1-v1',
               'robot_id': 'cobot-a', 'mission_id': 'm-1', 'version': 1, 'issued_at': T0,
               'valid_until': T0 + 600, 'frame_id': 'map', 'tasks': []}
    edge._on_command('cobot/v1/cobot-a/cmd/mission',
                     sign_command(worker_key, 'worker', mission, 'cobot-a'))
    assert edge.take_commands() == []
    assert edge.stats()['commands_rejected'] == {'wrong_key': 1}
    edge._on_command('cobot/v1/cobot-a/cmd/advisory',
                     sign_command(worker_key, 'worker', GOOD, 'cobot-a'))
    edge.take_commands()
    assert len(edge.advisories) == 1                  # its own job it may do
    edge._on_command('cobot/v1/cobot-a/cmd/mission', sign_command(KEY, 'planner', mission,
                                                                  'cobot-a'))
    assert [m.mission_id for m in edge.take_commands()] == ['m-1']   # the planner's still go
    edge.queue.close()
    with pytest.raises(Exception, match='advisory_key_ids'):
        BridgeConfig(robot_id='cobot-a', cloud_public_keys=(f'planner={paths["planner"]}',),
                     advisory_key_ids=('nobody',))


SNAP_ROUTES = parse_routes({'routes': [
    {'ros_topic': 'stop', 'type': 'std_msgs/msg/Bool', 'mqtt_topic': 'events/stop'},
    {'ros_topic': 'detections', 'type': 'vision_msgs/msg/Detection2DArray',
     'mqtt_topic': 'telemetry/people'},
    {'ros_topic': 'image', 'type': 'sensor_msgs/msg/Image', 'mqtt_topic': 'events/snap',
     'encoding': 'jpeg', 'filter': {'kind': 'snapshot', 'trigger_topic': 'stop',
                                    'field': 'data', 'equals': True,
                                    'context': ['detections']}}]})


@pytest.mark.parametrize(('detections', 'kept', 'counted'), [
    ({'detections': [{'id': 'a', 'score': 0.9}]}, True, {}),
    ({'detections': [{'id': 'a', 'score': float('nan')}]}, False,
     {'snapshot_context_non_finite': 1}),
    ({'detections': [{'id': 'x' * 1000}] * 80}, False, {'snapshot_context_too_large': 1}),
])
def test_a_snapshot_carries_the_robots_detections_or_says_why_not(
        tmp_path: Path, detections: dict[str, Any], kept: bool,
        counted: dict[str, int]) -> None:
    from cobot_hybrid_protocol.snapshot import parse_snapshot

    edge = EdgeBridge(BridgeConfig(robot_id='cobot-a', data_dir=str(tmp_path),
                                   state_period_s=3600.0), SNAP_ROUTES,
                      clock=SteppableClock(wall_s=T0))
    edge.offer(1, detections, None)
    assert edge.offer(0, {'data': True}, None) == [2]          # the stop fires the snapshot
    edge.send_snapshot(2, b'\xff\xd8\xff jpeg', 4, 3, 'cam', T0 - 0.1)
    edge.tick()
    (message,) = [m for m in edge.queue.peek(50) if m.topic.endswith('events/snap')]
    snapshot = parse_snapshot(message.payload)
    assert snapshot.trigger['topic'] == 'stop' and (snapshot.width, snapshot.height) == (4, 3)
    assert ('detections' in snapshot.context) == kept
    context_counts = {k: v for k, v in edge.uplink_refused.items()
                      if k.startswith('snapshot_context_')}
    assert context_counts == counted                 # the route itself counts its own
    edge.queue.close()
