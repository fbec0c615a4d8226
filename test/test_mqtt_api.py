"""The MQTT API document is current, valid AsyncAPI, and says what the code really sends.

A robot's bridge and the planner run their real cores on an in-memory broker (the transport
seam): an order, telemetry, a mission, its ack, task progress, state, statistics and the
delivery acknowledgements go through it, and every message on the broker must match a
channel of ``docs/asyncapi.yaml`` (its address, its QoS and retain flag) and validate
against that channel's payload schema. The schemas must also refuse what the validators
refuse (the validators stay stricter where a schema cannot say it).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cobot_hybrid_bridge.bridge import EdgeBridge
from cobot_hybrid_bridge.bridge_config import BridgeConfig
from cobot_hybrid_bridge.memory_link import memory_link_factory
from cobot_hybrid_bridge.routes import parse_routes
from cobot_hybrid_planner.service import PlannerConfig, PlannerService
from cobot_hybrid_planner.site import load_site
from cobot_hybrid_protocol import mission, schemas
from cobot_hybrid_protocol.asyncapi import CHANNELS, document
from cobot_hybrid_protocol.clock import SteppableClock
from cobot_hybrid_protocol.errors import SchemaError
from cobot_hybrid_protocol.orders import work_order
from cobot_hybrid_protocol.topics import ORDERS_TOPIC
from cobot_hybrid_protocol.transport import MemoryBroker, Message

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / 'build' / 'npm' / 'node_modules' / '@asyncapi' / 'specs' / 'schemas'
ROBOT = 'cobot-1'
ROUTES = parse_routes({'routes': [
    {'ros_topic': 'protective_stop', 'type': 'std_msgs/msg/Bool',
     'mqtt_topic': 'events/protective_stop', 'priority': 9},
    {'ros_topic': 'people', 'type': 'std_msgs/msg/String', 'mqtt_topic': 'telemetry/people'}]})


def test_the_generated_files_are_current() -> None:
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / 'gen_mqtt_api.py'),
                             '--check'], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    on_disk = yaml.safe_load((ROOT / 'docs' / 'asyncapi.yaml').read_text())
    assert on_disk == json.loads(json.dumps(document()))


def test_the_document_is_valid_asyncapi_3() -> None:
    spec_file = SPECS / '3.0.0-without-$id.json'
    assert spec_file.is_file(), (f'{spec_file} is missing: `make setup` installs the npm '
                                 'package @asyncapi/specs into build/npm')
    validator = jsonschema.Draft7Validator(json.loads(spec_file.read_text()))
    errors = [f'{list(e.path)}: {e.message[:200]}' for e in validator.iter_errors(document())]
    assert not errors, errors
    broken = document()
    broken['operations']['robotStatusSend']['bindings']['mqtt']['qos'] = 3
    assert list(validator.iter_errors(broken)), 'the AsyncAPI check would miss a bad QoS'


def test_every_example_validates_against_its_schema() -> None:
    doc = document()
    for name, message in doc['components']['messages'].items():
        for example in message['examples']:
            jsonschema.Draft7Validator(schemas.SCHEMAS[name]).validate(example['payload'])


# --- real messages -----------------------------------------------------------------------------

def _channel_of(topic: str) -> tuple[str, str, int, bool]:
    """The (channel id, message, qos, retain) whose address matches ``topic`` (most specific)."""
    matches = []
    for channel_id, (address, _, message, _, qos, retain, _) in CHANNELS.items():
        pattern = '^' + re.sub(r'\\\{\w+\\\}', '[^/]+', re.escape(address)) + '$'
        if re.match(pattern, topic):
            matches.append((address.count('{'), channel_id, message, qos, retain))
    assert matches, f'{topic} is in no channel of the MQTT API'
    _, channel_id, message, qos, retain = min(matches)
    return channel_id, message, qos, retain


@pytest.fixture
def system(tmp_path: Path) -> Any:
    """A bridge and a planner on one in-memory broker, with an operator client."""
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / 'planner.pub'
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM,
                                                  PublicFormat.SubjectPublicKeyInfo))
    broker = MemoryBroker()
    clock = SteppableClock(wall_s=1_800_000_000.0)
    bridge = EdgeBridge(BridgeConfig(robot_id=ROBOT, data_dir=str(tmp_path / 'edge'),
                                     cloud_public_keys=(f'planner={pub}',),
                                     state_period_s=1.0, delivery='cloud'),
                        ROUTES, clock=clock, link_factory=memory_link_factory(broker))
    planner = PlannerService(PlannerConfig(data_dir=tmp_path / 'cloud', plan_time_limit_s=0.3,
                                           delivery_ack_period_s=0.01),
                             load_site(ROOT / 'config' / 'examples' / 'site.yaml'), key,
                             clock=clock, transport=broker.transport('planner'))
    planner.start()
    bridge.start()
    yield broker, bridge, planner, clock
    bridge.stop()
    bridge.queue.close()
    planner.stop()


def _run(bridge: EdgeBridge, planner: PlannerService, clock: SteppableClock,
         seconds: float) -> list[Any]:
    missions = []
    for _ in range(int(seconds / 0.05)):
        clock.advance(0.05)
        bridge.tick()
        missions += bridge.take_commands()
        planner.step()
    return missions


def test_what_the_bridge_and_planner_send_is_what_the_api_says(system: Any) -> None:
    broker, bridge, planner, clock = system
    operator = broker.transport('operator')
    operator.connect([], lambda message: None)
    operator.publish(ORDERS_TOPIC, json.dumps(work_order('o-1', [
        {'task_id': 't1', 'type': 'pick', 'station': 'press-1', 'capability': 'pick',
         'duration_s': 5, 'priority': 5}])).encode())
    bridge.offer(0, {'data': True}, None)
    bridge.offer(1, {'data': 'two people'}, None)
    bridge.set_value('speed_scale', 0.5)
    bridge.send_stats()
    missions = _run(bridge, planner, clock, 3.0)
    assert missions and missions[0].tasks[0].task_id == 't1'
    bridge.report_progress(json.dumps(mission.progress_to_json(mission.TaskProgress(
        missions[0].mission_id, missions[0].version, 't1', 'started', clock.wall()))))
    _run(bridge, planner, clock, 1.0)
    assert planner.task_status()['t1']['status'] == 'in_progress'
    assert planner.missions()[ROBOT]['acked'] == 'accepted'

    seen: dict[str, int] = {}
    for sender, message in broker.log:
        channel, name, qos, retain = _channel_of(message.topic)
        seen[channel] = seen.get(channel, 0) + 1
        assert message.qos == qos, (message.topic, message.qos)
        if channel != 'robotTelemetry' and channel != 'robotEvents':   # per route
            assert message.retained == retain, (message.topic, message.retained)
        body = json.loads(message.payload)
        jsonschema.Draft7Validator(schemas.SCHEMAS[name]).validate(body)
        if name == 'SignedCommand':
            jsonschema.Draft7Validator(schemas.MISSION).validate(
                json.loads(base64.b64decode(body['payload'])))
        if name.endswith('Envelope') and sender == ROBOT:
            _props_match(message, body)
    expected = {'robotStatus', 'robotState', 'missionAck', 'taskProgress', 'bridgeStats',
                'robotTelemetry', 'robotEvents', 'missionCommand', 'delivered', 'workOrders'}
    assert expected <= set(seen), sorted(expected - set(seen))


def _props_match(message: Message, body: dict[str, Any]) -> None:
    assert message.properties['robot_id'] == body['robot_id'] == ROBOT
    assert int(message.properties['seq']) == body['seq']


def test_replica_messages_follow_the_api(tmp_path: Path) -> None:
    from cobot_hybrid_planner.lease import LeaseRecord

    lease = json.loads(LeaseRecord('cell-a', 'p1', 4).to_json())
    jsonschema.Draft7Validator(schemas.LEASE).validate(lease)
    planner = PlannerService(PlannerConfig(data_dir=tmp_path, fleet_id='cell-a'),
                             load_site(ROOT / 'config' / 'examples' / 'site.yaml'),
                             Ed25519PrivateKey.generate(),
                             transport=MemoryBroker().transport('planner-cell-a'))
    try:
        planner.add_orders(work_order('o', [{'task_id': 't', 'type': 'pick',
                                             'station': 'press-1', 'capability': 'pick',
                                             'duration_s': 5}]), now_s=1000.0)
        snapshot = json.loads(planner.ledger_snapshot())
        jsonschema.Draft7Validator(schemas.LEDGER).validate(snapshot)
        assert _channel_of('cobot/v1/planners/cell-a/ledger')[1] == 'Ledger'
        assert _channel_of('cobot/v1/planners/cell-a/lease')[1] == 'Lease'
    finally:
        planner.stop()


# --- the schemas refuse what the validators refuse --------------------------------------------

def _good_ack() -> dict[str, Any]:
    return mission.ack_to_json(mission.MissionAck('accepted', 'm', 3))


def _good_progress() -> dict[str, Any]:
    return mission.progress_to_json(mission.TaskProgress('m', 3, 't', 'done', 1000.0))


def _good_mission() -> dict[str, Any]:
    task = mission.Task('t', 'pick', 's', mission.Pose(1.0, 2.0, 0.0, 0.5), 3.0)
    return mission.mission_to_json(mission.Mission('c', 'r', 'm', 3, 1000.0, 2000.0, 'map',
                                                   (task,)))


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is _DROP:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


_DROP = object()
BAD = [
    ('mission ack', _good_ack, mission.validate_ack, schemas.MISSION_ACK, [
        (('status',), 'maybe'), (('version',), 0), (('version',), 2**63), (('schema',), 'x'),
        (('extra',), 1), (('reason',), _DROP), (('mission_id',), ''),
        (('mission_id',), 'x' * 200), (('reason',), 'x' * 1001),
        (('mission_id',), None),                       # accepted needs both ids
        (('reason',), 'bad\x00'), (('mission_id',), 'm\u00a0'), (('mission_id',), 'm\u200b'),
        (('mission_id',), 'm\n')]),
    ('task progress', _good_progress, mission.validate_progress, schemas.TASK_PROGRESS, [
        (('status',), 'paused'), (('stamp',), -1.0), (('stamp',), 5e9), (('version',), True),
        (('task_id',), 7), (('mission_id',), _DROP)]),
    ('mission', _good_mission, mission.validate_mission, schemas.MISSION, [
        (('kind',), 'order'), (('tasks', 0, 'type'), 'dance'),
        (('tasks', 0, 'pose', 'x'), 1e7), (('tasks', 0, 'pose', 'yaw'), 7.0),
        (('tasks', 0, 'duration_s'), -1.0), (('tasks', 0, 'extra'), 1),
        (('issued_at',), 'now'), (('frame_id',), ''), (('robot_id',), 'r\n'),
        (('tasks', 0, 'deadline'), -5.0)]),
]


def test_what_the_validators_accept_the_schemas_accept() -> None:
    rejected = mission.ack_to_json(mission.MissionAck('rejected', None, None, 'malformed: x'))
    jsonschema.Draft7Validator(schemas.MISSION_ACK).validate(rejected)
    half = {**rejected, 'version': 3}      # one id without the other: both refuse
    with pytest.raises(SchemaError):
        mission.validate_ack(half)
    assert list(jsonschema.Draft7Validator(schemas.MISSION_ACK).iter_errors(half))
    no_deadline = _set(_good_mission(), ('tasks', 0, 'deadline'), None)
    mission.validate_mission(no_deadline)
    jsonschema.Draft7Validator(schemas.MISSION).validate(no_deadline)


def test_the_schemas_printable_text_is_what_the_validators_call_printable() -> None:
    import unicodedata

    pattern = re.compile(schemas._PRINTABLE)
    differ = [hex(code) for code in range(0x10000)
              if unicodedata.category(chr(code)) not in ('Cn', 'Cs')
              and bool(pattern.search(f'a{chr(code)}b')) != f'a{chr(code)}b'.isprintable()]
    assert not differ, f'schemas.NOT_PRINTABLE is out of date for this Python: {differ[:10]}'
    assert not pattern.search('abc\n') and not pattern.search('') and pattern.search('a b')


@pytest.mark.parametrize(('what', 'good', 'validate', 'schema', 'mutations'), BAD,
                         ids=[b[0] for b in BAD])
def test_the_schemas_refuse_what_the_validators_refuse(what: str, good: Any, validate: Any,
                                                       schema: dict[str, Any],
                                                       mutations: list[Any]) -> None:
    validator = jsonschema.Draft7Validator(schema)
    assert not list(validator.iter_errors(good())), what
    validate(good())
    for path, value in mutations:
        bad = _set(good(), path, value)
        with pytest.raises(SchemaError):
            validate(bad)
        assert list(validator.iter_errors(bad)), f'{what}: the schema accepts {path}={value!r}'
