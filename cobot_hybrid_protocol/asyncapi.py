"""The AsyncAPI 3.0 document of the MQTT contract, built from the code, with real examples.

:func:`document` returns it as a dict: one channel per topic of :mod:`cobot_hybrid_protocol.
topics`, the payload schemas of :mod:`cobot_hybrid_protocol.schemas`, QoS and retain as MQTT
operation bindings, the MQTT 5 user properties as message headers, and an example of every
message made by the contract's own builders (a signed mission with a fixed example key, so
the document is the same on every run). ``tools/gen_mqtt_api.py`` writes it to
``docs/asyncapi.yaml`` and renders ``docs/mqtt-api.md``; ``test_mqtt_api`` checks both are
current, that the document validates against the AsyncAPI 3.0 JSON Schema, and that real
messages of the bridge and the planner validate against it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cobot_hybrid_protocol import (
    advisory,
    delivery,
    envelope,
    mission,
    model_update,
    orders,
    schemas,
    signing,
    snapshot,
    topics,
)
from cobot_hybrid_protocol.crdt import HLC, PNCounter, TelemetryState
from cobot_hybrid_protocol.status import status_payload

__all__ = ['CHANNELS', 'EXAMPLE_ROBOT', 'document', 'example_key']

EXAMPLE_ROBOT = 'cobot-1'
_NOW = 1795790000.0
_ROBOT = {'robot_id': {'description': 'the robot id: one topic level and the MQTT client id '
                       '(1-64 printable characters without / + # $ or spaces; not '
                       f'{" or ".join(sorted(topics.RESERVED_ROBOT_IDS))})'}}
_FLEET = {'fleet_id': {'description': 'the fleet of planner replicas'}}
_NAME = {'name': {'description': 'the route name of bridge_routes.yaml (mqtt_topic)'}}
_USER_PROPERTIES = {'type': 'object', 'description': 'MQTT 5 user properties (absent on '
                    'MQTT 3.1.1, where the envelope carries them)', 'properties': {
                        'robot_id': {'type': 'string'}, 'seq': {'type': 'string',
                                                                'pattern': '^[0-9]{1,19}$'},
                        'stamp': {'type': 'string'}}}


def example_key() -> Any:
    """Return the fixed Ed25519 key the examples are signed with (an example: never deploy)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b'cobot_hybrid AsyncAPI example key').digest())


def _json(payload: bytes) -> Any:
    return json.loads(payload)


def _examples() -> dict[str, Any]:
    state = TelemetryState()
    state.counters['protective_stops'] = PNCounter()
    state.counters['protective_stops'].add(EXAMPLE_ROBOT, 2)
    clock = HLC(EXAMPLE_ROBOT)
    state.values.set('speed_scale', 0.5, clock.now(int(_NOW * 1000)))
    state.alarms.set('protective_stop', True, clock.now(int(_NOW * 1000)))
    ack = mission.ack_to_json(mission.MissionAck('accepted', 'm-42', 3))
    progress = mission.progress_to_json(mission.TaskProgress('m-42', 3, 't1', 'done', _NOW))
    task = mission.Task('t1', 'pick', 'press-1', mission.Pose(1.0, 2.0, 0.0, 1.57), 30.0)
    command = mission.Mission('m-42-v3', EXAMPLE_ROBOT, 'm-42', 3, _NOW, _NOW + 3600.0,
                              'map', (task,))
    signed = signing.sign_command(example_key(), 'planner', mission.mission_to_json(command),
                                  EXAMPLE_ROBOT)
    order = orders.work_order('o-17', [{'task_id': 't1', 'type': 'pick', 'station': 'press-1',
                                        'capability': 'pick', 'duration_s': 30, 'priority': 5,
                                        'deadline_s': 600, 'after': []}])
    env = envelope.build_envelope
    ref = model_update.ModelRef('yolo11n-pose', 3, hashlib.sha256(b'example').hexdigest(),
                                11_800_000, 320)
    model_command = model_update.command_to_json(model_update.ModelCommand(
        'r-7-cobot-1-12', EXAMPLE_ROBOT, 'r-7', 12, _NOW, _NOW + 86_400.0, 'install', ref))
    model_status = model_update.status_to_json(model_update.ModelStatus(
        'active', 'r-7', 12, ref, ref, '', {'agreement': 0.97, 'latency_p99_ms': 31.5,
                                            'smoke_frames': 8, 'swap_ms': 0.4}, _NOW))
    metrics = model_update.metrics_to_json(model_update.ModelMetrics(
        ref, 10.0, 98, 0, 24.1, 31.0, 1.3, _NOW))
    request = model_update.blob_request_to_json(model_update.BlobRequest(
        ref.sha256, 0, 8 * 131072, 131072))
    return {
        'ModelStatusEnvelope': _json(env(EXAMPLE_ROBOT, 46, _NOW, 'model_status',
                                         envelope.CONTRACT_TYPES['model_status'],
                                         model_status)),
        'ModelMetricsEnvelope': _json(env(EXAMPLE_ROBOT, 47, _NOW, 'model_metrics',
                                          envelope.CONTRACT_TYPES['model_metrics'], metrics)),
        'BlobRequestEnvelope': _json(env(EXAMPLE_ROBOT, 48, _NOW, 'blob_request',
                                         envelope.CONTRACT_TYPES['blob_request'], request)),
        'ModelCommand': model_command,
        'BlobChunk': '<131072 bytes of the file>',
        'Status': _json(status_payload('online', _NOW)),
        'StateEnvelope': _json(env(EXAMPLE_ROBOT, 41, _NOW, 'state',
                                   envelope.CONTRACT_TYPES['state'], state.to_json())),
        'MissionAckEnvelope': _json(env(EXAMPLE_ROBOT, 42, _NOW, 'mission_ack',
                                        envelope.CONTRACT_TYPES['mission_ack'], ack)),
        'TaskProgressEnvelope': _json(env(EXAMPLE_ROBOT, 43, _NOW, 'task_progress',
                                          envelope.CONTRACT_TYPES['task_progress'], progress)),
        'BridgeStatsEnvelope': _json(env(EXAMPLE_ROBOT, 44, _NOW, 'bridge',
                                         envelope.CONTRACT_TYPES['bridge'],
                                         {'connected': True, 'backlog_messages': 0})),
        'TelemetryEnvelope': _json(env(EXAMPLE_ROBOT, 45, _NOW, 'protective_stop',
                                       'std_msgs/msg/Bool', {'data': True})),
        'SignedCommand': _json(signed),
        'Mission': json.loads(base64.b64decode(_json(signed)['payload'])),
        'Delivered': _json(delivery.delivered_payload(EXAMPLE_ROBOT, [(1, 40), (42, 45)])),
        'Advisory': advisory.advisory_to_json(advisory.Advisory(
            'adv-cobot-1-49-snapshot', EXAMPLE_ROBOT, _NOW, _NOW + 3600.0,
            'events/stop_snapshot', 49, 'edge_missed_people', 'the cloud (snapshot) found 2 '
            'people, the robot reported 1: 1 missed; like cobot-4 seq 17 (0.93)', 2, 1,
            ((412.0, 96.5, 470.2, 301.0),), (), ({'robot_id': 'cobot-4', 'seq': 17,
                                                   'label': 'edge_missed_people',
                                                   'similarity': 0.93},))),
        'Snapshot': '<a SnapshotHeader>\n<image.bytes bytes of JPEG>',
        'SnapshotHeader': _json(env(EXAMPLE_ROBOT, 49, _NOW, 'image', snapshot.SNAPSHOT_TYPE, {
            'image': {'width': 640, 'height': 480, 'frame_id': 'camera_optical',
                      'stamp': _NOW - 0.05, 'bytes': 48213},
            'trigger': {'topic': 'protective_stop', 'field': 'data', 'value': True,
                        'stamp': _NOW},
            'context': {'detections': {'stamp': _NOW - 0.04, 'data': {'detections': []}}}})),
        'WorkerStatus': {'group': 'default', 'worker': 'worker-0', 'stamp': _NOW,
                         'backlog': 3, 'running': 1, 'backlog_bytes': 151000,
                         'oldest_wait_s': 1.2, 'done': 120, 'dead': 0,
                         'latency_p50_s': 0.61, 'latency_p99_s': 2.4,
                         'end_to_end_p50_s': 0.9, 'end_to_end_p99_s': 3.1, 'vectors': 1610,
                         'counters': {'duplicates': 2}, 'replica': {'taken': 64, 'ran': 63}},
        'WorkOrder': order,
        'Lease': {'fleet': 'cell-a', 'owner': 'planner-a', 'epoch': 3},
        'Ledger': {'fleet': 'cell-a', 'epoch': 3, 'tasks': [], 'missions': []},
    }


#: channel id -> (address, parameters, message name, who sends it, QoS, retained, summary)
CHANNELS: dict[str, tuple[str, dict[str, Any], str, str, int, bool, str]] = {
    'robotStatus': (f'{topics.TOPIC_ROOT}/{{robot_id}}/{topics.STATUS}', _ROBOT, 'Status',
                    'robot', 1, True, 'liveness: online on every connect; the last will '
                    'says offline'),
    'robotState': (f'{topics.TOPIC_ROOT}/{{robot_id}}/{topics.STATE}', _ROBOT,
                   'StateEnvelope', 'robot', 1, True, 'CRDT snapshot of counters, values, '
                   'alarms (every state_period_s)'),
    'missionAck': (f'{topics.TOPIC_ROOT}/{{robot_id}}/{topics.MISSION_ACK}', _ROBOT,
                   'MissionAckEnvelope', 'robot', 1, False, 'the answer to every mission '
                   'command'),
    'taskProgress': (f'{topics.TOPIC_ROOT}/{{robot_id}}/{topics.TASK_PROGRESS}', _ROBOT,
                     'TaskProgressEnvelope', 'robot', 1, False, 'started, done or failed, '
                     'per task'),
    'bridgeStats': (f'{topics.TOPIC_ROOT}/{{robot_id}}/{topics.BRIDGE_TELEMETRY}', _ROBOT,
                    'BridgeStatsEnvelope', 'robot', 1, False, 'link and queue statistics '
                    '(every stats_period_s)'),
    'robotTelemetry': (f'{topics.TOPIC_ROOT}/{{robot_id}}/telemetry/{{name}}',
                       _ROBOT | _NAME, 'TelemetryEnvelope', 'robot', 1, False,
                       'routed ROS topics (bridge_routes.yaml; QoS and retain per route)'),
    'robotEvents': (f'{topics.TOPIC_ROOT}/{{robot_id}}/events/{{name}}', _ROBOT | _NAME,
                    'TelemetryEnvelope', 'robot', 1, False, 'routed events (never retained; '
                    'a snapshot route sends a Snapshot); mission_ack, task_progress and '
                    'stop_snapshot have their own channels'),
    'missionCommand': (f'{topics.TOPIC_ROOT}/{{robot_id}}/cmd/mission', _ROBOT,
                       'SignedCommand', 'cloud', 1, False, 'a signed mission (MQTT 5 message '
                       'expiry = its validity); never retained'),
    'advisoryCommand': (f'{topics.TOPIC_ROOT}/{{robot_id}}/cmd/advisory', _ROBOT,
                        'SignedCommand', 'cloud worker', 1, False, 'a signed advisory '
                        '(payload: Advisory; MQTT 5 message expiry = its validity): the '
                        'robot logs it and shows it on ROS, never a safety input'),
    'modelCommand': (f'{topics.TOPIC_ROOT}/{{robot_id}}/cmd/model', _ROBOT, 'SignedCommand',
                     'cloud', 1, False, 'a signed model install or rollback (payload: '
                     'ModelCommand; MQTT 5 message expiry = its validity); never retained'),
    'modelStatus': (f'{topics.TOPIC_ROOT}/{{robot_id}}/{topics.MODEL_STATUS}', _ROBOT,
                    'ModelStatusEnvelope', 'robot', 1, False, 'each step of a model command, '
                    'and the model after a restart'),
    'modelMetrics': (f'{topics.TOPIC_ROOT}/{{robot_id}}/{topics.MODEL_METRICS}', _ROBOT,
                     'ModelMetricsEnvelope', 'robot', 1, False, 'a summary of the running '
                     "model per period (the rollout's gates)"),
    'blobRequest': (f'{topics.TOPIC_ROOT}/{{robot_id}}/{topics.BLOB_REQUEST}', _ROBOT,
                    'BlobRequestEnvelope', 'robot', 1, False, 'a window of chunks of a model '
                    'file (resume: from what the robot has; its bandwidth cap paces them)'),
    'blobChunk': (f'{topics.TOPIC_ROOT}/{{robot_id}}/blob/{{sha256}}/{{offset}}',
                  _ROBOT | {'sha256': {'description': 'the file'},
                            'offset': {'description': 'where the chunk starts [bytes]'}},
                  'BlobChunk', 'cloud', 1, False, 'one chunk a robot asked for, raw bytes'),
    'stopSnapshot': (f'{topics.TOPIC_ROOT}/{{robot_id}}/events/stop_snapshot', _ROBOT,
                     'Snapshot', 'robot', 1, False, 'the camera when a protective stop '
                     'begins, with its trigger and the detections the robot had; cloud '
                     'workers take each once through $share/workers-<group>/cobot/v1/+/'
                     'events/stop_snapshot'),
    'workerStatus': (f'{topics.TOPIC_ROOT}/workers/{{group}}/status',
                     {'group': {'description': 'the worker group'}}, 'WorkerStatus',
                     'cloud worker', 1, True, "a worker group's backlog, latency, done and "
                     'dead (what its autoscaler reads)'),
    'delivered': (f'{topics.TOPIC_ROOT}/{{robot_id}}/{topics.DELIVERED}', _ROBOT, 'Delivered',
                  'cloud', 1, False, 'seqs the cloud has stored (robots with delivery: '
                  'cloud delete them then)'),
    'workOrders': (topics.ORDERS_TOPIC, {}, 'WorkOrder', 'operator', 1, False,
                   'tasks to plan (a retained order is refused)'),
    'fleetLease': (f'{topics.TOPIC_ROOT}/planners/{{fleet_id}}/lease', _FLEET, 'Lease',
                   'planner replica', 1, True, 'which replica owns the fleet'),
    'fleetLedger': (f'{topics.TOPIC_ROOT}/planners/{{fleet_id}}/ledger', _FLEET, 'Ledger',
                    'planner owner', 1, True, "the owner's ledger, for the next owner"),
    'fleetOrders': (f'{topics.TOPIC_ROOT}/planners/{{fleet_id}}/orders', _FLEET, 'WorkOrder',
                    'planner replica', 1, False, 'orders a replica took from the shared '
                    'subscription, forwarded to the owner'),
}
_HEADERS = {'StateEnvelope', 'MissionAckEnvelope', 'TaskProgressEnvelope',
            'BridgeStatsEnvelope', 'TelemetryEnvelope', 'ModelStatusEnvelope',
            'ModelMetricsEnvelope', 'BlobRequestEnvelope'}


def document() -> dict[str, Any]:
    """Return the AsyncAPI 3.0.0 document of the contract."""
    examples = _examples()
    messages: dict[str, Any] = {}
    for name, body in schemas.SCHEMAS.items():
        if name in ('Mission', 'ModelCommand', 'Advisory', 'SnapshotHeader'):
            continue   # parts of other messages (signed payloads, a snapshot's first line)
        message: dict[str, Any] = {
            'name': name, 'title': name, 'contentType': 'application/json',
            'summary': body.get('description', name),
            'payload': {'$ref': f'#/components/schemas/{name}'},
            'examples': [{'name': f'{name}-example', 'payload': examples[name]}]}
        if name in _HEADERS:
            message['headers'] = _USER_PROPERTIES
        if name in ('BlobChunk', 'Snapshot'):
            message['contentType'] = 'application/octet-stream'
        if name == 'Snapshot':
            message['description'] = ('The first line is a SnapshotHeader: '
                                      + json.dumps(examples['SnapshotHeader']))
            message['headers'] = _USER_PROPERTIES
        messages[name] = message
    messages['SignedCommand']['description'] = (
        'The payload decodes (base64) to a Mission (cmd/mission): '
        + json.dumps(examples['Mission']) + ' or a ModelCommand (cmd/model): '
        + json.dumps(examples['ModelCommand']) + ' or an Advisory (cmd/advisory): '
        + json.dumps(examples['Advisory']))
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for channel_id, (address, params, kind, sender, qos, retain, summary) in \
            CHANNELS.items():
        channels[channel_id] = {
            'address': address, 'description': f'{summary} (sent by the {sender})',
            'messages': {kind: {'$ref': f'#/components/messages/{kind}'}}}
        if params:
            channels[channel_id]['parameters'] = params
        operations[f'{channel_id}Send'] = {
            'action': 'send', 'summary': f'the {sender} publishes',
            'channel': {'$ref': f'#/channels/{channel_id}'},
            'messages': [{'$ref': f'#/channels/{channel_id}/messages/{kind}'}],
            'bindings': {'mqtt': {'qos': qos, 'retain': retain, 'bindingVersion': '0.2.0'}}}
    return {
        'asyncapi': '3.0.0',
        'info': {'title': 'cobot_hybrid robot-cloud MQTT contract', 'version': '1.0.0',
                 'description': 'Every topic under cobot/v1 between the edge bridges, the '
                 'cloud planner and its replicas. Generated by tools/gen_mqtt_api.py from '
                 'cobot_hybrid_protocol; do not edit by hand.'},
        'defaultContentType': 'application/json',
        'servers': {
            'robots': {'host': 'broker.example.invalid:8883', 'protocol': 'secure-mqtt',
                       'protocolVersion': '5', 'description': 'robots: mutual TLS, the '
                       'certificate CN is the client id and the ACL allows only its own '
                       'prefix', 'security': [{'$ref': '#/components/securitySchemes/mtls'}]},
            'cloud': {'host': 'broker.example.invalid:8884', 'protocol': 'secure-mqtt',
                      'protocolVersion': '5', 'description': 'cloud clients (planner '
                      'replicas, operators) with their own CA and ACL',
                      'security': [{'$ref': '#/components/securitySchemes/mtls'}]}},
        'channels': channels,
        'operations': operations,
        'components': {
            'schemas': schemas.SCHEMAS,
            'messages': messages,
            'securitySchemes': {'mtls': {'type': 'X509', 'description': 'client '
                                         'certificates (config/mosquitto/)'}}},
    }
