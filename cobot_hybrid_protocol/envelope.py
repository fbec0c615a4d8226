"""The uplink envelope: how every JSON message a robot sends is wrapped.

::

    {"robot_id": "cobot-1", "seq": 42, "stamp": 1795790000.123, "topic": "detections",
     "type": "vision_msgs/msg/Detection2DArray", "data": {...}}

``seq`` is the robot's outbox sequence number (1 .. 2**63-1; the cloud de-duplicates by
``(robot_id, seq)``), ``stamp`` the robot's wall clock [unix s] when the message was made,
``topic`` the ROS topic (or the contract's own name: ``state``, ``mission_ack``,
``task_progress``, ``bridge``), ``type`` the ROS type or the contract's type name
(:data:`CONTRACT_TYPES`). A camera snapshot is this envelope, a newline and the JPEG
(:mod:`~cobot_hybrid_protocol.snapshot`); CDR messages, which are not JSON, carry their
``robot_id`` and ``seq`` in MQTT 5 user properties instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cobot_hybrid_protocol.errors import PayloadError, SchemaError
from cobot_hybrid_protocol.limits import (
    TELEMETRY_LIMITS,
    Limits,
    is_name,
    is_number_in,
    parse_json,
)

__all__ = ['CONTRACT_TYPES', 'MAX_SEQ', 'Envelope', 'build_envelope', 'parse_envelope',
           'parse_seq']

MAX_SEQ = 2**63 - 1
_SEQ_DIGITS = len(str(MAX_SEQ))
#: The contract's own message types (everything else is a ROS type name).
CONTRACT_TYPES = {'state': 'cobot_hybrid/TelemetryState',
                  'mission_ack': 'cobot_hybrid/MissionAck',
                  'task_progress': 'cobot_hybrid/TaskProgress',
                  'bridge': 'cobot_hybrid/BridgeStats',
                  'model_status': 'cobot_hybrid/ModelStatus',
                  'model_metrics': 'cobot_hybrid/ModelMetrics',
                  'blob_request': 'cobot_hybrid/BlobRequest',
                  'snapshot': 'cobot_hybrid/Snapshot'}
_FIELDS = frozenset({'robot_id', 'seq', 'stamp', 'topic', 'type', 'data'})


@dataclass(frozen=True)
class Envelope:
    """One uplink message, read back."""

    robot_id: str
    seq: int
    stamp: float
    topic: str
    type: str
    data: Any


def build_envelope(robot_id: str, seq: int, stamp: float, topic: str, type_name: str,
                   data: Mapping[str, Any] | Any) -> bytes:
    """Compact JSON bytes of one uplink message (``data`` must be JSON without NaN)."""
    return json.dumps({'robot_id': robot_id, 'seq': seq, 'stamp': round(stamp, 6),
                       'topic': topic, 'type': type_name, 'data': data},
                      separators=(',', ':'), allow_nan=False).encode()


def parse_seq(value: Any) -> int | None:
    """Return a seq given as an integer or as decimal text (a user property); else None."""
    if isinstance(value, str) and value.isascii() and value.isdigit() \
            and len(value) <= _SEQ_DIGITS:
        value = int(value)
    if type(value) is not int or not 0 < value <= MAX_SEQ:
        return None
    return value


def parse_envelope(payload: bytes | str, limits: Limits = TELEMETRY_LIMITS,
                   what: str = 'an uplink envelope') -> Envelope:
    """Read an envelope within ``limits``: PayloadError (not JSON, too big) or SchemaError."""
    body = parse_json(payload, limits, what)
    if not isinstance(body, dict):
        raise SchemaError(f'{what} must be a JSON object')
    if set(body) != _FIELDS:
        raise SchemaError(f'{what} must have exactly the fields {sorted(_FIELDS)}; unknown '
                          f'{sorted(set(body) - _FIELDS)[:5]}, missing '
                          f'{sorted(_FIELDS - set(body))}')
    seq = body['seq']
    if type(seq) is not int or not 0 < seq <= MAX_SEQ:   # a JSON integer (text: properties)
        raise SchemaError(f'{what}: seq must be an integer in 1..2**63-1')
    if not is_name(body['robot_id'], 64):
        raise SchemaError(f'{what}: robot_id must be printable text of at most 64 chars')
    if not is_number_in(body['stamp'], 0.0, 4_102_444_800.0):
        raise SchemaError(f'{what}: stamp must be unix seconds in [0, 2100)')
    for name in ('topic', 'type'):
        if not is_name(body[name], 256):
            raise SchemaError(f'{what}: {name} must be printable text of at most 256 chars')
    if not isinstance(body['data'], dict):
        raise SchemaError(f'{what}: data must be a JSON object')
    return Envelope(body['robot_id'], seq, float(body['stamp']), body['topic'], body['type'],
                    body['data'])


def is_opaque(exc: PayloadError) -> bool:
    """Whether a payload that failed to parse is simply not JSON (JPEG, CDR): not an attack."""
    return exc.reason in ('not_json', 'not_utf8')
