"""bridge_node as its own process: ROS topics -> filters -> real mosquitto, missions back down."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cobot_hybrid_protocol.mission import MISSION_SCHEMA
from cobot_hybrid_protocol.signing import sign_command
from cobot_hybrid_protocol.snapshot import parse_snapshot

pytestmark = [pytest.mark.ros, pytest.mark.broker]

NODE = 'cobot_hybrid_bridge.nodes.bridge_node'
KEY = Ed25519PrivateKey.generate()


class Cloud:
    """Everything under cobot/v1/# on the broker, as the cloud sees it."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes, dict[str, str]]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='cloud-test',
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe('cobot/v1/#', qos=1)
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, bytes(m.payload), dict(getattr(m.properties, 'UserProperty', []) or [])))
        self.client.connect('127.0.0.1', port)
        self.client.loop_start()

    def on(self, suffix: str) -> list[bytes]:
        return [p for t, p, _ in list(self.messages) if t.endswith(suffix)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_bridge(ros_process: Any, tmp_path: Path, port: int) -> Any:
    key_file = tmp_path / 'planner.pub'
    key_file.write_bytes(KEY.public_key().public_bytes(Encoding.PEM,
                                                       PublicFormat.SubjectPublicKeyInfo))
    params = tmp_path / 'bridge.yaml'
    params.write_text(yaml.safe_dump({'bridge_node': {'ros__parameters': {
        'robot_id': 'cobot-a', 'broker_port': port, 'data_dir': str(tmp_path / 'data'),
        'cloud_public_keys': [f'planner={key_file}'], 'state_period_s': 1.0,
        'stats_period_s': 0.5}}}))
    return ros_process(NODE, '--ros-args', '--params-file', str(params))


def mission_listener(harness: Any) -> list[Any]:
    """The robot side's latched subscription to the missions ``bridge_node`` publishes."""
    from cobot_hybrid_msgs.msg import Mission as MissionMsg
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    missions: list[Any] = []
    harness.node.create_subscription(MissionMsg, 'mission', missions.append, latched)
    return missions


PROBE = 'probe'   # a command kind the bridge has no handler for: it answers "unsupported"


def is_probe_ack(payload: bytes) -> bool:
    return f"kind '{PROBE}'" in json.loads(payload)['data']['reason']


def mission_acks(cloud: Cloud) -> list[bytes]:
    """The bridge's mission acks, without those of the probes."""
    return [p for p in cloud.on('events/mission_ack') if not is_probe_ack(p)]


def wait_until_commands_get_through(harness: Any, cloud: Cloud, bridge: Any) -> None:
    """Send a probe command every 0.5 s until the bridge answers one.

    Seeing the bridge online does not mean its command subscription is in place yet; an
    answered probe does.
    """
    sent_at = [0.0]

    def answered() -> bool:
        if any(is_probe_ack(p) for p in cloud.on('events/mission_ack')):
            return True
        if time.monotonic() - sent_at[0] >= 0.5:
            sent_at[0] = time.monotonic()
            cloud.client.publish(f'cobot/v1/cobot-a/cmd/{PROBE}', b'{}', qos=1)
        return False
    assert harness.spin_until(answered, 30.0), bridge.log()


def mission(version: int, now: float) -> dict[str, Any]:
    return {'schema': MISSION_SCHEMA, 'kind': 'mission', 'command_id': f'm-1-v{version}',
            'robot_id': 'cobot-a', 'mission_id': 'm-1', 'version': version,
            'issued_at': now, 'valid_until': now + 600, 'frame_id': 'map',
            'tasks': [{'task_id': 't1', 'type': 'pick', 'station': 'press-1',
                       'pose': {'x': 1.0, 'y': 2.0, 'z': 0.0, 'yaw': 0.0}, 'duration_s': 5.0},
                      {'task_id': 't2', 'type': 'place', 'station': 'tray',
                       'pose': {'x': 3.0, 'y': 1.0, 'z': 0.0, 'yaw': 1.0}, 'duration_s': 5.0}]}


def test_only_exceptions_and_summaries_go_up(make_node: Any, ros_process: Any, tmp_path: Path,
                                             mosquitto_broker: Any) -> None:
    import numpy as np
    from sensor_msgs.msg import Image
    from std_msgs.msg import Bool, Float64

    from cobot_hybrid_ros.images import numpy_to_image

    cloud = Cloud(mosquitto_broker.port)
    bridge = start_bridge(ros_process, tmp_path, mosquitto_broker.port)
    ros_process('synthetic_detector.py', '--start', '3.0')  # a person and a cup, 30 Hz
    harness = make_node('robot_side')
    stop_pub = harness.node.create_publisher(Bool, 'protective_stop', 10)
    scale_pub = harness.node.create_publisher(Float64, 'speed_scale', 10)
    image_pub = harness.node.create_publisher(Image, 'image', 10)
    assert harness.spin_until(lambda: stop_pub.get_subscription_count() > 0, 30.0), bridge.log()
    assert harness.spin_until(lambda: image_pub.get_subscription_count() > 0
                              and scale_pub.get_subscription_count() > 0, 30.0), bridge.log()
    frame = numpy_to_image(np.full((48, 64, 3), 120, np.uint8), 'bgr8')
    # The stimulus, paced like a robot: an image, then the stop state 50 ms later (so the
    # snapshot has a frame), a new state every 0.35 s (a stop of about a second).
    for state in (False, False, True, True, True, False):
        image_pub.publish(frame)
        harness.spin_for(0.05)
        stop_pub.publish(Bool(data=state))
        scale_pub.publish(Float64(data=0.0 if state else 1.0))
        harness.spin_for(0.3)
    try:
        assert harness.spin_until(lambda: len(cloud.on('events/protective_stop')) >= 3
                                  and cloud.on('events/stop_snapshot')
                                  and cloud.on('/state'), 20.0), (bridge.log(),
                                                                   cloud.messages[-3:])
        harness.spin_for(0.5)   # the subject: time for a repeated state to go up (it must not)
        stops = [json.loads(p)['data']['data'] for p in cloud.on('events/protective_stop')]
        assert stops == [False, True, False]  # changes only
        (raw,) = cloud.on('events/stop_snapshot')   # sent once, when the stop began
        snapshot = parse_snapshot(raw)
        assert snapshot.jpeg[:2] == b'\xff\xd8' and (snapshot.width, snapshot.height) == (64, 48)
        assert snapshot.envelope.robot_id == 'cobot-a'
        assert snapshot.trigger['topic'] == 'protective_stop' and snapshot.trigger['value'] is True
        edge = snapshot.context['detections']['data']['detections']   # what the edge had,
        assert len(edge) == 2                                         # before its filters
        people = [json.loads(p) for p in cloud.on('telemetry/people')]
        assert people and all(d['data']['detections'][0]['results'][0]['hypothesis']
                              ['class_id'] == 'person' and len(d['data']['detections']) == 1
                              for d in people)  # the cup was filtered out at the edge
        stamps = sorted(d['stamp'] for d in people)
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        assert min(gaps, default=1.0) >= 0.45  # rate limited to 2 Hz (the detector runs 30 Hz)
        state = json.loads(cloud.on('/state')[-1])['data']
        assert 'protective_stop' in state['values']
        seqs = [int(props['seq']) for _, _, props in cloud.messages if 'seq' in props]
        assert len(seqs) == len(set(seqs))
    finally:
        cloud.close()


def test_signed_missions_come_down_and_bad_ones_do_not(make_node: Any, ros_process: Any,
                                                       tmp_path: Path,
                                                       mosquitto_broker: Any) -> None:
    from cobot_hybrid_msgs.msg import BridgeStatus
    from cobot_hybrid_msgs.msg import Mission as MissionMsg
    from cobot_hybrid_msgs.msg import MissionAck as MissionAckMsg
    from nav_msgs.msg import Path as PathMsg
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String
    from visualization_msgs.msg import MarkerArray

    cloud = Cloud(mosquitto_broker.port)
    bridge = start_bridge(ros_process, tmp_path, mosquitto_broker.port)
    harness = make_node('robot_side')
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    missions: list[Any] = []
    legacy: list[Any] = []
    paths: list[Any] = []
    markers: list[Any] = []
    typed_acks: list[Any] = []
    statuses: list[Any] = []
    harness.node.create_subscription(MissionMsg, 'mission', missions.append, latched)
    harness.node.create_subscription(String, 'mission_json', legacy.append, latched)
    harness.node.create_subscription(PathMsg, 'mission_path', paths.append, latched)
    harness.node.create_subscription(MarkerArray, 'mission_markers', markers.append, latched)
    harness.node.create_subscription(MissionAckMsg, 'mission_ack', typed_acks.append, 10)
    harness.node.create_subscription(BridgeStatus, 'bridge_status', statuses.append, 10)
    assert harness.spin_until(lambda: cloud.on('cobot-a/status'), 30.0), bridge.log()
    wait_until_commands_get_through(harness, cloud, bridge)
    now = time.time()
    topic = 'cobot/v1/cobot-a/cmd/mission'
    other = Ed25519PrivateKey.generate()
    for payload in (sign_command(other, 'planner', mission(1, now), 'cobot-a'),   # forged
                    sign_command(KEY, 'planner', mission(2, now), 'cobot-a'),     # good
                    sign_command(KEY, 'planner', mission(2, now), 'cobot-a'),     # replay
                    sign_command(KEY, 'planner', mission(1, now).__or__(
                        {'command_id': 'm-1-v1b'}), 'cobot-a'),                   # older
                    b'{"garbage": true'):
        cloud.client.publish(topic, payload, qos=1).wait_for_publish(5)
    assert harness.spin_until(lambda: missions and legacy and paths and markers and len(
        mission_acks(cloud)) >= 5 and statuses and len(
            [a for a in typed_acks if f"kind '{PROBE}'" not in a.reason]) >= 5, 20.0), \
        (bridge.log(), cloud.on('mission_ack'))
    harness.spin_for(0.5)   # the subject: time for a second mission that must not come
    assert len(missions) == 1 and len(legacy) == 1
    received = missions[0]
    assert (received.mission_id, received.version, received.header.frame_id) == \
        ('m-1', 2, 'map')
    assert [(t.task_id, t.pose.x) for t in received.tasks] == [('t1', 1.0), ('t2', 3.0)]
    assert json.loads(legacy[0].data)['version'] == 2   # the deprecated JSON, the same one
    assert [m.text for m in markers[0].markers if m.text][0].startswith('1. ')
    typed_acks = [a for a in typed_acks if f"kind '{PROBE}'" not in a.reason]
    assert sorted(a.status for a in typed_acks) == ['accepted'] + ['rejected'] * 4
    assert any(a.mission_id == '' and a.version == 0 for a in typed_acks)   # the garbage
    assert statuses[-1].robot_id == 'cobot-a' and statuses[-1].connected
    rejected = {c.reason: c.count for c in statuses[-1].commands_rejected}
    assert sum(rejected.values()) >= 4, rejected
    assert [(p.pose.position.x, p.pose.position.y) for p in paths[0].poses] == \
        [(1.0, 2.0), (3.0, 1.0)]
    acks = [json.loads(p)['data'] for p in mission_acks(cloud)]
    assert sorted(a['status'] for a in acks) == ['accepted'] + ['rejected'] * 4
    reasons = ' '.join(a['reason'] for a in acks)
    for reason in ('bad_signature', 'replayed', 'superseded', 'malformed'):
        assert reason in reasons
    cloud.close()


POISON = [
    b'{"key_id": ' + b'7' * 5000 + b', "payload": "", "signature": ""}',   # ValueError before
    b'[' * 5000 + b']' * 5000,                                             # RecursionError
    b'{"key_id": "planner", "payload": "' + b'A' * 400_000 + b'", "signature": ""}',
]


def test_poison_commands_retained_on_the_broker_never_stop_the_bridge(
        make_node: Any, ros_process: Any, tmp_path: Path, mosquitto_broker: Any) -> None:
    """Each crash of the hardening issue, published retained so it comes back on restart."""
    cloud = Cloud(mosquitto_broker.port)
    for index, payload in enumerate(POISON):
        cloud.client.publish(f'cobot/v1/cobot-a/cmd/p{index}', payload, qos=1,
                             retain=True).wait_for_publish(5)
    cloud.client.publish('cobot/v1/cobot-a/cmd/mission', POISON[0], qos=1,
                         retain=True).wait_for_publish(5)
    harness = make_node('robot_side')
    missions = mission_listener(harness)
    seen: set[int] = set()    # acks not acknowledged by this cloud are sent again: by seq
    for attempt in (1, 2):    # the second start gets the same retained messages again
        bridge = start_bridge(ros_process, tmp_path, mosquitto_broker.port)
        assert harness.spin_until(lambda: len({json.loads(p)['seq'] for p in cloud.on(
            'events/mission_ack')} - seen) >= 4, 30.0), bridge.log()
        for payload in POISON:   # the same, live, through the signature check
            cloud.client.publish('cobot/v1/cobot-a/cmd/mission', payload,
                                 qos=1).wait_for_publish(5)
        # Still alive and still taking commands: a good mission is accepted after the poison.
        good = sign_command(KEY, 'planner', {**mission(attempt, time.time()),
                                             'command_id': f'good-{attempt}'}, 'cobot-a')
        cloud.client.publish('cobot/v1/cobot-a/cmd/mission', good, qos=1).wait_for_publish(5)
        assert harness.spin_until(lambda n=attempt: len(missions) >= n, 20.0), bridge.log()
        assert harness.spin_until(lambda: len({json.loads(p)['seq'] for p in cloud.on(
            'events/mission_ack')} - seen) >= 8, 10.0), bridge.log()
        assert bridge.popen.poll() is None, bridge.log()
        envelopes = [json.loads(p) for p in cloud.on('events/mission_ack')]
        acks = [e['data'] for e in {e['seq']: e for e in envelopes
                                    if e['seq'] not in seen}.values()]
        seen.update(e['seq'] for e in envelopes)
        reasons = [a['reason'].split(':')[0] for a in acks if a['status'] == 'rejected']
        assert sorted(reasons) == sorted(['unsupported'] * 3 + ['retained', 'malformed',
                                                                'malformed', 'too_large'])
        assert [a['status'] for a in acks].count('accepted') == 1
        bridge.stop()
    cloud.close()


def test_corrupt_replay_store_and_outbox_are_rebuilt_and_the_bridge_runs(
        make_node: Any, ros_process: Any, tmp_path: Path, mosquitto_broker: Any) -> None:

    from cobot_hybrid_bridge.durable_queue import DurableQueue, open_readonly_stats

    store = tmp_path / 'data' / 'cobot-a' / 'replay.db'
    store.parent.mkdir(parents=True)
    store.write_bytes(b'SQLite format 3\x00' + b'\xff' * 4000)     # a damaged file
    outbox = store.parent / 'outbox.db'      # 30 messages queued, then the file is damaged
    queue = DurableQueue(outbox)
    for _ in range(30):
        queue.put('cobot/v1/cobot-a/telemetry/x', b'queued before the damage')
    queue.close()
    outbox.write_bytes(b'garbage' * 2000)
    issued_before = time.time() - 60
    cloud = Cloud(mosquitto_broker.port)
    bridge = start_bridge(ros_process, tmp_path, mosquitto_broker.port)
    harness = make_node('robot_side')
    missions = mission_listener(harness)
    assert harness.spin_until(lambda: cloud.on('cobot-a/status'), 30.0), bridge.log()
    wait_until_commands_get_through(harness, cloud, bridge)
    topic = 'cobot/v1/cobot-a/cmd/mission'
    old = sign_command(KEY, 'planner', mission(1, issued_before), 'cobot-a')
    cloud.client.publish(topic, old, qos=1).wait_for_publish(5)
    assert harness.spin_until(lambda: mission_acks(cloud), 20.0), bridge.log()
    ack = json.loads(mission_acks(cloud)[0])['data']
    assert ack['status'] == 'rejected' and ack['reason'].startswith('store_rebuilt'), ack
    fresh = sign_command(KEY, 'planner', {**mission(2, time.time() + 1),
                                          'command_id': 'fresh'}, 'cobot-a')
    cloud.client.publish(topic, fresh, qos=1).wait_for_publish(5)
    assert harness.spin_until(lambda: missions, 20.0), bridge.log()
    assert list(store.parent.glob('replay.db.corrupt-*'))
    assert list(store.parent.glob('outbox.db.corrupt-*'))
    bridge.stop()
    books = open_readonly_stats(outbox)       # the loss is in the books, not hidden
    assert books.dropped['corrupt'] == 30 and books.balanced, books
    cloud.close()


def test_the_executor_runs_a_mission_and_its_progress_goes_up(
        make_node: Any, ros_process: Any, tmp_path: Path, mosquitto_broker: Any) -> None:
    """bridge_node and mission_executor_node as processes; speed scale from this process."""
    from cobot_hybrid_msgs.msg import TaskProgress
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Float64, String

    cloud = Cloud(mosquitto_broker.port)
    bridge = start_bridge(ros_process, tmp_path, mosquitto_broker.port)
    executor = ros_process('cobot_hybrid_bridge.nodes.mission_executor_node', '--ros-args',
                           '-p', 'stall_timeout_s:=30.0')
    skill = ros_process('cobot_hybrid_bridge.nodes.skill_server_node')
    harness = make_node('robot_side')
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    scale_pub = harness.node.create_publisher(Float64, 'speed_scale', latched)
    junk_pub = harness.node.create_publisher(TaskProgress, 'task_progress', 10)
    json_pub = harness.node.create_publisher(String, 'task_progress_json', 10)
    harness.node.create_timer(0.1, lambda: scale_pub.publish(Float64(data=1.0)))
    assert harness.spin_until(lambda: cloud.on('cobot-a/status'), 30.0), bridge.log()
    wait_until_commands_get_through(harness, cloud, bridge)
    # The executor hears the missions and the speed scale; the bridge hears the reports.
    assert harness.spin_until(lambda: harness.node.count_subscribers('/mission') > 0
                              and scale_pub.get_subscription_count() >= 3   # skill, bridge
                              and junk_pub.get_subscription_count() > 0
                              and json_pub.get_subscription_count() > 0, 30.0), \
        (bridge.log(), executor.log(), skill.log())
    # Bad reports are not sent up, typed (a status outside the contract) or JSON.
    junk_pub.publish(TaskProgress(mission_id='m-1', version=1, task_id='t1',
                                  status='exploded', stamp=time.time()))
    junk_pub.publish(TaskProgress(mission_id='m-1', version=1, task_id='t1',
                                  status='done', stamp=float('nan')))
    json_pub.publish(String(data='{"schema": "nope"}'))
    body = mission(1, time.time())
    for task in body['tasks']:
        task['duration_s'] = 1.0
    cloud.client.publish('cobot/v1/cobot-a/cmd/mission', sign_command(
        KEY, 'planner', body, 'cobot-a'), qos=1).wait_for_publish(5)
    assert harness.spin_until(lambda: len(cloud.on('events/task_progress')) >= 4, 30.0), \
        (bridge.log(), executor.log(), skill.log())
    harness.spin_for(0.5)   # the subject: time for a report that must not go up
    reports = [json.loads(p)['data'] for p in cloud.on('events/task_progress')]
    assert [(r['task_id'], r['status']) for r in reports] == [
        ('t1', 'started'), ('t1', 'done'), ('t2', 'started'), ('t2', 'done')]
    assert all(r['mission_id'] == 'm-1' and r['version'] == 1 for r in reports)
    assert reports[1]['stamp'] - reports[0]['stamp'] >= 0.9   # one second of work at scale 1
    assert bridge.log().count('task progress not sent') == 3, bridge.log()
    cloud.close()


def test_bad_routes_or_keys_exit_with_the_reason(ros_process: Any, tmp_path: Path) -> None:
    routes = tmp_path / 'routes.yaml'
    routes.write_text(yaml.safe_dump({'routes': [{'ros_topic': 'x',
                                                  'type': 'no_such_msgs/msg/Thing',
                                                  'mqtt_topic': 'telemetry/x'}]}))
    bridge = ros_process(NODE, '--ros-args', '-p', f'routes_file:={routes}', '-p',
                         f'data_dir:={tmp_path}', '-p', 'robot_id:=cobot-a')
    assert bridge.wait(30.0) == 2
    assert 'no_such_msgs/msg/Thing' in bridge.log() and 'not installed' in bridge.log()
    keys = ros_process(NODE, '--ros-args', '-p', f'data_dir:={tmp_path}', '-p',
                       f'cloud_public_keys:=[planner={tmp_path}/missing.pub]')
    assert keys.wait(30.0) == 2
    assert 'cannot be read' in keys.log()


def test_a_signed_cloud_advisory_is_shown_on_ros_and_a_forged_one_is_not(
        make_node: Any, ros_process: Any, tmp_path: Path, mosquitto_broker: Any) -> None:
    from diagnostic_msgs.msg import DiagnosticArray

    cloud = Cloud(mosquitto_broker.port)
    bridge = start_bridge(ros_process, tmp_path, mosquitto_broker.port)
    harness = make_node('robot_side')
    shown: list[Any] = []
    harness.node.create_subscription(DiagnosticArray, 'advisories', shown.append, 10)
    assert harness.spin_until(lambda: cloud.on('cobot-a/status'), 30.0), bridge.log()
    wait_until_commands_get_through(harness, cloud, bridge)
    now = time.time()
    body = {'schema': 'cobot_hybrid/advisory/v1', 'kind': 'advisory', 'command_id': 'adv-7',
            'robot_id': 'cobot-a', 'issued_at': now, 'valid_until': now + 600,
            'upload': {'kind': 'events/stop_snapshot', 'seq': 7},
            'verdict': 'edge_missed_people', 'summary': 'the cloud found 2 people, the robot '
            'reported 1: 1 missed', 'cloud_people': 2, 'edge_people': 1,
            'missed': [[1.0, 2.0, 3.0, 4.0]], 'false_alarms': [], 'similar': []}
    topic = 'cobot/v1/cobot-a/cmd/advisory'
    forged = sign_command(Ed25519PrivateKey.generate(), 'planner',
                          {**body, 'command_id': 'adv-8'}, 'cobot-a')
    for payload in (forged, sign_command(KEY, 'planner', body, 'cobot-a')):
        cloud.client.publish(topic, payload, qos=1).wait_for_publish(5)
    try:
        assert harness.spin_until(lambda: shown, 20.0), bridge.log()
        harness.spin_for(0.5)   # the subject: time for the forged one, which must not come
        assert len(shown) == 1
        (status,) = shown[0].status
        values = {kv.key: kv.value for kv in status.values}
        assert status.message.startswith('the cloud found 2 people') and \
            values['verdict'] == 'edge_missed_people' and values['upload'].endswith('seq 7')
        assert 'cloud advisory edge_missed_people' in bridge.log()
    finally:
        cloud.close()
