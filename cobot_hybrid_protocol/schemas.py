"""JSON Schemas (draft-07) of every payload of the contract, built from the contract's constants.

Each schema is made here from the same constants the validators use (field names, bounds,
enumerations), so a change of a bound changes both. ``test_mqtt_api`` checks that real
messages produced by the bridge and the planner validate, and that payloads the validators
refuse are refused by the schemas too. The AsyncAPI document (:mod:`cobot_hybrid_protocol.
asyncapi`) refers to them. The validators stay the authority where a schema cannot say it
(a version strictly after another, a deadline after its release, unique task ids).
"""

from __future__ import annotations

from typing import Any

from cobot_hybrid_protocol import (
    crdt,
    delivery,
    envelope,
    mission,
    model_update,
    orders,
    signing,
    status,
)
from cobot_hybrid_protocol.limits import ID_MAX

__all__ = ['SCHEMAS', 'schema']

_MAX_SEQ = envelope.MAX_SEQ


#: The BMP characters ``str.isprintable`` refuses (Cc, Cf, Co, Zl, Zp, Zs but the space; as of
#: Unicode 15), unassigned code points aside; ``test_mqtt_api`` compares it with this Python.
NOT_PRINTABLE = ('\\u0000-\\u001f\\u007f-\\u00a0\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f'
                 '\\u0890-\\u0891\\u08e2\\u1680\\u180e\\u2000-\\u200f\\u2028-\\u202f'
                 '\\u205f-\\u2064\\u2066-\\u206f\\u3000\\ue000-\\uf8ff\\ufeff\\ufff9-\\ufffb')

#: Printable text as the validators mean it (``str.isprintable``; unassigned code points and
#: characters beyond the BMP are left to the validators), to the very end of the string.
_PRINTABLE = f'^[^{NOT_PRINTABLE}]+(?![\\s\\S])'
_NO_NUL = '^[^\\u0000]*(?![\\s\\S])'


def _id(max_chars: int = ID_MAX, description: str = '') -> dict[str, Any]:
    out: dict[str, Any] = {'type': 'string', 'minLength': 1, 'maxLength': max_chars,
                           'pattern': _PRINTABLE}
    if description:
        out['description'] = description
    return out


def _number(low: float, high: float, description: str = '') -> dict[str, Any]:
    out: dict[str, Any] = {'type': 'number', 'minimum': low, 'maximum': high}
    if description:
        out['description'] = description
    return out


def _integer(low: int, high: int, description: str = '') -> dict[str, Any]:
    out: dict[str, Any] = {'type': 'integer', 'minimum': low, 'maximum': high}
    if description:
        out['description'] = description
    return out


def _object(properties: dict[str, Any], required: list[str] | None = None,
            description: str = '') -> dict[str, Any]:
    out: dict[str, Any] = {'type': 'object', 'additionalProperties': False,
                           'required': sorted(properties) if required is None else required,
                           'properties': properties}
    if description:
        out['description'] = description
    return out


_UNIX = _number(mission.MIN_UNIX_S, mission.MAX_UNIX_S, 'unix time [s]')
_VERSION = _integer(1, mission.MAX_VERSION, 'mission version: a newer one supersedes')


def _envelope(data: dict[str, Any], description: str) -> dict[str, Any]:
    return _object({
        'robot_id': _id(64, 'the robot that sent it (equals the topic level)'),
        'seq': _integer(1, _MAX_SEQ, "the robot's outbox sequence number (de-duplication)"),
        'stamp': _number(0.0, mission.MAX_UNIX_S, 'robot wall clock when it was made [unix s]'),
        'topic': _id(256, 'the ROS topic, or the contract name (state, mission_ack, ...)'),
        'type': _id(256, 'the ROS type, or the contract type (cobot_hybrid/MissionAck ...)'),
        'data': data,
    }, description=description)


_GCOUNTER = {'type': 'object', 'maxProperties': crdt.MAX_ENTRIES,
             'additionalProperties': _integer(0, crdt.MAX_COUNT)}
_HLC = {'type': 'array', 'minItems': 3, 'maxItems': 3, 'items': [
    _integer(0, crdt.MAX_COUNT, 'wall clock [ms]'), _integer(0, crdt.MAX_LOGICAL, 'logical'),
    {'type': 'string', 'description': 'replica (robot id)'}],
    'description': 'hybrid logical clock stamp [wall_ms, logical, replica]'}
TELEMETRY_STATE = _object({
    'counters': {'type': 'object', 'maxProperties': crdt.MAX_ENTRIES,
                 'additionalProperties': _object({'p': _GCOUNTER, 'n': _GCOUNTER}),
                 'description': 'PN counters by name (per replica increments, decrements)'},
    'values': {'type': 'object', 'maxProperties': crdt.MAX_ENTRIES,
               'additionalProperties': {'type': 'array', 'minItems': 2, 'maxItems': 2,
                                        'items': [_HLC, {}]},
               'description': 'last-writer-wins values by key: [stamp, value]'},
    'alarms': {'type': 'object', 'maxProperties': crdt.MAX_ENTRIES,
               'additionalProperties': {'type': 'array', 'minItems': 2, 'maxItems': 2,
                                        'items': [_HLC, {'type': 'boolean'}]},
               'description': 'alarms as last-writer-wins flags: [stamp, raised]'},
}, description='CRDT snapshot of a robot: any order, any duplicates, the same merge')

MISSION_ACK = _object({
    'schema': {'const': mission.ACK_SCHEMA},
    'mission_id': {'oneOf': [_id(), {'type': 'null'}]},
    'version': {'oneOf': [_VERSION, {'type': 'null'}]},
    'status': {'enum': list(mission.ACK_STATUSES)},
    'reason': {'type': 'string', 'maxLength': mission.MAX_REASON, 'pattern': _NO_NUL,
               'description': '"<reject code>: <detail>" of a rejection'},
}, description='the robot answers every mission command; null ids: an unreadable command')
MISSION_ACK['allOf'] = [
    {'if': {'properties': {'status': {'const': 'accepted'}}},
     'then': {'properties': {'mission_id': _id(), 'version': _VERSION}}},
    {'if': {'properties': {'mission_id': {'type': 'null'}}},
     'then': {'properties': {'version': {'type': 'null'}}},
     'else': {'properties': {'version': _VERSION}}},
]

TASK_PROGRESS = _object({
    'schema': {'const': mission.PROGRESS_SCHEMA},
    'mission_id': _id(), 'version': _VERSION, 'task_id': _id(),
    'status': {'enum': list(mission.PROGRESS_STATUSES)},
    'reason': {'type': 'string', 'maxLength': mission.MAX_REASON, 'pattern': _NO_NUL},
    'stamp': _UNIX,
}, required=['mission_id', 'schema', 'stamp', 'status', 'task_id', 'version'],
    description='what the robot did with one task of a mission version')

_POSE = _object({k: _number(-mission.MAX_COORD_M, mission.MAX_COORD_M, f'{k} [m]')
                 for k in ('x', 'y', 'z')} | {'yaw': _number(-6.283185307179586,
                                                             6.283185307179586, '[rad]')})
MISSION = _object({
    'schema': {'const': mission.MISSION_SCHEMA}, 'kind': {'const': 'mission'},
    'command_id': _id(description='unique per command (replay protection)'),
    'robot_id': _id(), 'mission_id': _id(), 'version': _VERSION,
    'issued_at': _UNIX, 'valid_until': _UNIX, 'frame_id': _id(),
    'tasks': {'type': 'array', 'maxItems': mission.MAX_TASKS, 'items': _object({
        'task_id': _id(), 'type': {'enum': list(mission.TASK_TYPES)}, 'station': _id(),
        'pose': _POSE, 'duration_s': _number(0.0, mission.MAX_DURATION_S, '[s]'),
        'deadline': {'oneOf': [_UNIX, {'type': 'null'}]}},
        required=['duration_s', 'pose', 'station', 'task_id', 'type'])},
}, description='a mission for one robot (the signed payload of cmd/mission)')

SIGNED_COMMAND = _object({
    'key_id': {'type': 'string', 'description': 'which cloud key signed it'},
    'payload': {'type': 'string', 'contentEncoding': 'base64',
                'contentMediaType': 'application/json',
                'description': 'the command JSON (a Mission), base64'},
    'signature': {'type': 'string', 'contentEncoding': 'base64',
                  'description': 'Ed25519 over: payload bytes, a newline, the robot id'},
}, description=f'a signed command, at most {signing.MAX_COMMAND_BYTES} bytes')

STATUS = _object({'state': {'enum': list(status.STATES)},
                  'stamp': _number(0.0, status.MAX_STAMP_S, 'robot clock [unix s]')},
                 required=['state'], description='liveness (retained; the last will: offline)')

DELIVERED = _object({
    'schema': {'const': delivery.DELIVERED_SCHEMA}, 'robot_id': _id(64),
    'ranges': {'type': 'array', 'maxItems': delivery.MAX_RANGES, 'items': {
        'type': 'array', 'minItems': 2, 'maxItems': 2, 'items': _integer(1, _MAX_SEQ)},
        'description': 'inclusive [first, last] seq ranges the cloud has stored'},
}, description='what the cloud has durably stored of this robot (delivery: cloud)')

_LIMITS = orders.OrderLimits()
WORK_ORDER = _object({
    'schema': {'const': orders.ORDERS_SCHEMA},
    'order_id': {'type': 'string', 'maxLength': ID_MAX},
    'tasks': {'type': 'array', 'maxItems': _LIMITS.max_tasks, 'items': _object({
        'task_id': _id(), 'type': {'enum': list(orders.TASK_TYPES)}, 'station': _id(),
        'capability': _id(), 'duration_s': _number(0.0, _LIMITS.max_duration_s, '[s]'),
        'priority': _integer(*orders.PRIORITY_RANGE),
        'release_s': {'oneOf': [_number(0.0, _LIMITS.horizon_s, 'from the planning epoch [s]'),
                                {'type': 'null'}]},
        'deadline_s': {'oneOf': [_number(0.0, _LIMITS.horizon_s), {'type': 'null'}]},
        'after': {'type': 'array', 'maxItems': _LIMITS.max_after, 'items': _id()},
    }, required=list(orders.TASK_REQUIRED))},
}, required=['schema', 'tasks'], description='tasks to plan; a bad task is rejected alone')

LEASE = _object({'fleet': {'type': 'string'}, 'owner': _id(),
                 'epoch': _integer(1, _MAX_SEQ, 'grows with every owner change')},
                description='who owns the fleet (retained; between planner replicas)')

LEDGER = {'type': 'object', 'required': ['fleet', 'epoch', 'tasks', 'missions'],
          'properties': {'fleet': {'type': 'string'}, 'epoch': _integer(0, _MAX_SEQ),
                         'tasks': {'type': 'array', 'items': {'type': 'object'}},
                         'missions': {'type': 'array', 'items': {'type': 'object'}}},
          'description': "the owner's mission ledger, for the next owner (retained)"}

_M = model_update
_SHA256 = {'type': 'string', 'pattern': '^[0-9a-f]{64}$', 'description': 'sha256, lower-case hex'}
MODEL_REF = _object({
    'name': _id(), 'version': _VERSION | {'description': 'the registry version'},
    'sha256': _SHA256, 'size_bytes': _integer(1, _M.MAX_MODEL_BYTES, '[bytes]'),
    'imgsz': _integer(32, _M.MAX_IMGSZ, 'input size [px]'), 'task': {'enum': list(_M.TASKS)},
    'precision': {'enum': list(_M.PRECISIONS)}, 'format': {'enum': list(_M.FORMATS)},
}, description='one model version and how to recognise its file')
MODEL_COMMAND = _object({
    'schema': {'const': _M.MODEL_COMMAND_SCHEMA}, 'kind': {'const': 'model'},
    'command_id': _id(description='unique per command (replay protection)'),
    'robot_id': _id(64), 'rollout_id': _id(),
    'revision': _integer(1, mission.MAX_VERSION, 'per robot: a higher one supersedes'),
    'issued_at': _UNIX, 'valid_until': _UNIX, 'action': {'enum': list(_M.ACTIONS)},
    'model': MODEL_REF,
    'source': {'oneOf': [
        _object({'kind': {'const': 'mqtt'},
                 'chunk_bytes': _integer(_M.MIN_CHUNK_BYTES, _M.MAX_CHUNK_BYTES, '[bytes]')},
                required=['kind']),
        _object({'kind': {'const': 'http'}, 'url': {'type': 'string', 'maxLength': _M.MAX_URL,
                                                    'pattern': '^https?://'}})]},
    'acceptance': _object({
        'min_agreement': _number(0.0, 1.0, 'agreement with the running model, at least'),
        'max_latency_ms': _number(1.0, 60_000.0, 'smoke-check p99 at most [ms]'),
        'smoke_frames': _integer(1, 256), 'max_restarts': _integer(0, 100),
        'watch_s': _number(0.0, 86_400.0, 'a crash loop within this of the swap [s]')}),
}, description='install or roll back a model version (the signed payload of cmd/model)')
_REASON = {'type': 'string', 'maxLength': mission.MAX_REASON, 'pattern': _NO_NUL,
           'description': '"<code>: <detail>"; failed/rolled_back start with one of '
           + ', '.join(_M.FAILURE_REASONS)}
MODEL_STATUS = _object({
    'schema': {'const': _M.STATUS_SCHEMA}, 'state': {'enum': list(_M.MODEL_STATES)},
    'rollout_id': {'type': 'string', 'maxLength': ID_MAX},
    'revision': _integer(0, mission.MAX_VERSION, '0: not about a command'),
    'model': {'oneOf': [MODEL_REF, {'type': 'null'}]},
    'active': {'oneOf': [MODEL_REF, {'type': 'null'}]}, 'reason': _REASON,
    'metrics': {'type': 'object', 'additionalProperties': False,
                'properties': {k: _number(0.0, 1e12) for k in _M._STATUS_METRICS}},
    'stamp': _UNIX,
}, description='one step of a model command on the robot, or its model after a restart')
MODEL_METRICS = _object({
    'schema': {'const': _M.METRICS_SCHEMA}, 'model': MODEL_REF,
    'window_s': _number(0.0, 86_400.0, '[s]'), 'frames': _integer(0, 10**9),
    'errors': _integer(0, 10**9), 'latency_p50_ms': _number(0.0, 1e6, '[ms]'),
    'latency_p99_ms': _number(0.0, 1e6, '[ms]'),
    'detections_mean': _number(0.0, 1e4, 'per frame'), 'stamp': _UNIX,
}, description='what the running model did over one period (the gates of a rollout)')
BLOB_REQUEST = _object({
    'schema': {'const': _M.BLOB_REQUEST_SCHEMA}, 'sha256': _SHA256,
    'offset': _integer(0, _M.MAX_MODEL_BYTES, 'a multiple of chunk_bytes [bytes]'),
    'length': _integer(1, 64 * _M.MAX_CHUNK_BYTES, 'at most 64 chunks [bytes]'),
    'chunk_bytes': _integer(_M.MIN_CHUNK_BYTES, _M.MAX_CHUNK_BYTES, '[bytes]'),
}, description='a window of chunks of a model file the robot was sent a command for')
BLOB_CHUNK = {'type': 'string', 'contentEncoding': 'binary',
              'description': 'the raw bytes of one chunk (application/octet-stream); the '
              "file's sha256 in the signed command authenticates the whole"}

_BOX = {'type': 'array', 'items': {'type': 'number'}, 'minItems': 4, 'maxItems': 4,
        'description': 'x1, y1, x2, y2 [px]'}
ADVISORY = _object({
    'schema': {'const': 'cobot_hybrid/advisory/v1'}, 'kind': {'const': 'advisory'},
    'command_id': _id(), 'robot_id': _id(), 'issued_at': _UNIX, 'valid_until': _UNIX,
    'upload': _object({'kind': _id(256, 'events/<name> or telemetry/<name>'),
                       'seq': _integer(1, _MAX_SEQ, "the upload's seq")}),
    'verdict': {'enum': ['edge_missed_people', 'edge_false_alarm', 'both']},
    'summary': {'type': 'string', 'maxLength': 500},
    'cloud_people': _integer(0, 10000), 'edge_people': _integer(0, 10000),
    'missed': {'type': 'array', 'maxItems': 20, 'items': _BOX},
    'false_alarms': {'type': 'array', 'maxItems': 20, 'items': _BOX},
    'similar': {'type': 'array', 'maxItems': 10, 'items': _object({
        'robot_id': _id(), 'seq': _integer(1, _MAX_SEQ),
        'label': {'type': 'string', 'maxLength': 200},
        'similarity': _number(-1.0, 1.0, 'cosine similarity')})}},
    description="the cloud's second look at an upload, for the robot's log (never a safety "
    'input); the signed payload of cmd/advisory')

SNAPSHOT_HEADER = _envelope(_object({
    'image': _object({'width': _integer(1, 16384, '[px]'), 'height': _integer(1, 16384, '[px]'),
                      'frame_id': {'type': 'string', 'maxLength': 256},
                      'stamp': _number(0.0, mission.MAX_UNIX_S, "the image's own stamp "
                                       '[unix s]'),
                      'bytes': _integer(0, 8 * 1024 * 1024, 'length of the JPEG that '
                                        'follows the header')}),
    'trigger': {'type': 'object', 'required': ['topic', 'field', 'stamp'],
                'description': 'what made the robot send it (topic, field, value, stamp)'},
    'context': {'type': 'object', 'description': 'per ROS topic named by the route, the '
                'newest message the robot had: {"stamp": unix s, "data": ROS message}'}},
    required=['image', 'trigger']), 'a snapshot header')
SNAPSHOT = {'type': 'string', 'contentEncoding': 'binary',
            'description': 'a SnapshotHeader (compact JSON, no newline inside), one newline '
            '(0x0a), then the JPEG (image.bytes long): cobot_hybrid_protocol.snapshot'}
WORKER_STATUS = _object({
    'group': _id(), 'worker': _id(256, 'the replica that published it'),
    'stamp': _number(0.0, mission.MAX_UNIX_S, '[unix s]'),
    'backlog': _integer(0, _MAX_SEQ, 'uploads taken and not yet done (the autoscaling input)'),
    'running': _integer(0, _MAX_SEQ), 'backlog_bytes': _integer(0, _MAX_SEQ),
    'oldest_wait_s': _number(0.0, 1e9, '[s]'),
    'done': _integer(0, _MAX_SEQ), 'dead': _integer(0, _MAX_SEQ, 'jobs given up on (the '
                                                    'dead-letter record)'),
    'latency_p50_s': {'type': ['number', 'null']}, 'latency_p99_s': {'type': ['number', 'null']},
    'end_to_end_p50_s': {'type': ['number', 'null']},
    'end_to_end_p99_s': {'type': ['number', 'null']},
    'vectors': _integer(0, _MAX_SEQ, 'embeddings in the incident index'),
    'counters': {'type': 'object'}, 'replica': {'type': 'object'}},
    required=['group', 'worker', 'stamp', 'backlog', 'done', 'dead'],
    description="a worker group's backlog and latency (retained; every status_period_s)")

BRIDGE_STATS = {'type': 'object', 'description': 'link and queue statistics of the bridge'}
ROS_MESSAGE = {'type': 'object', 'description': 'a ROS message as JSON (fields by name; '
               'byte arrays base64; non-finite floats as text). JSON integers are written '
               'without a fraction everywhere (3, never 3.0), which JSON Schema cannot say'}

#: name -> JSON Schema; the uplink ones wrapped in the envelope.
SCHEMAS: dict[str, dict[str, Any]] = {
    'Status': STATUS,
    'StateEnvelope': _envelope(TELEMETRY_STATE, 'a CRDT state snapshot'),
    'MissionAckEnvelope': _envelope(MISSION_ACK, 'a mission ack'),
    'TaskProgressEnvelope': _envelope(TASK_PROGRESS, 'a task progress report'),
    'BridgeStatsEnvelope': _envelope(BRIDGE_STATS, "the bridge's statistics"),
    'TelemetryEnvelope': _envelope(ROS_MESSAGE, 'a routed ROS message'),
    'ModelStatusEnvelope': _envelope(MODEL_STATUS, 'a model status report'),
    'ModelMetricsEnvelope': _envelope(MODEL_METRICS, 'a model metrics summary'),
    'BlobRequestEnvelope': _envelope(BLOB_REQUEST, 'a request for chunks of a model file'),
    'SignedCommand': SIGNED_COMMAND,
    'Mission': MISSION,
    'ModelCommand': MODEL_COMMAND,
    'BlobChunk': BLOB_CHUNK,
    'Advisory': ADVISORY,
    'Snapshot': SNAPSHOT,
    'SnapshotHeader': SNAPSHOT_HEADER,
    'WorkerStatus': WORKER_STATUS,
    'Delivered': DELIVERED,
    'WorkOrder': WORK_ORDER,
    'Lease': LEASE,
    'Ledger': LEDGER,
}


def schema(name: str) -> dict[str, Any]:
    """Return one schema by name (see :data:`SCHEMAS`)."""
    return SCHEMAS[name]
