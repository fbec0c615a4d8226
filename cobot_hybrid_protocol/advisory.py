"""A cloud advisory: what the cloud's second look at an upload found, signed, for the robot's log.

A worker that analysed a snapshot (:mod:`cobot_hybrid_perception.snapshot_analysis`) and
found the edge missed people, or stopped for nobody, sends the robot an advisory on
``cobot/v1/<robot_id>/cmd/advisory``, signed like every command
(:mod:`cobot_hybrid_protocol.signing`). The robot checks it like every command (key,
robot, time window, replay), logs it, counts it and shows it on ROS; **it is never a safety
input**: no decision of the edge reads it.

::

    {"schema": "cobot_hybrid/advisory/v1", "kind": "advisory", "command_id": "adv-...",
     "robot_id": "cobot-1", "issued_at": 1795790000.0, "valid_until": 1795793600.0,
     "upload": {"kind": "events/stop_snapshot", "seq": 42},
     "verdict": "edge_missed_people", "summary": "...",
     "cloud_people": 3, "edge_people": 1,
     "missed": [[x1, y1, x2, y2], ...], "false_alarms": [...],
     "similar": [{"robot_id": "cobot-4", "seq": 17, "label": "...", "similarity": 0.93}]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cobot_hybrid_protocol.errors import SchemaError
from cobot_hybrid_protocol.mission import _fields, _number, _text, _unix, _version
from cobot_hybrid_protocol.topics import UPLINK_BRANCHES

__all__ = ['ADVISORY_SCHEMA', 'MAX_BOXES', 'MAX_SIMILAR', 'VERDICTS', 'Advisory',
           'advisory_to_json', 'validate_advisory']

ADVISORY_SCHEMA = 'cobot_hybrid/advisory/v1'
VERDICTS = ('edge_missed_people', 'edge_false_alarm', 'both')
MAX_BOXES = 20
MAX_SIMILAR = 10
MAX_SUMMARY = 500


@dataclass(frozen=True)
class Advisory:
    """One advisory, read back."""

    command_id: str
    robot_id: str
    issued_at: float
    valid_until: float
    upload_kind: str
    upload_seq: int
    verdict: str
    summary: str
    cloud_people: int
    edge_people: int
    missed: tuple[tuple[float, float, float, float], ...]
    false_alarms: tuple[tuple[float, float, float, float], ...]
    similar: tuple[dict[str, Any], ...]


def advisory_to_json(advisory: Advisory) -> dict[str, Any]:
    """Return the v1 JSON object of an advisory (what the cloud signs)."""
    return {'schema': ADVISORY_SCHEMA, 'kind': 'advisory', 'command_id': advisory.command_id,
            'robot_id': advisory.robot_id, 'issued_at': advisory.issued_at,
            'valid_until': advisory.valid_until,
            'upload': {'kind': advisory.upload_kind, 'seq': advisory.upload_seq},
            'verdict': advisory.verdict, 'summary': advisory.summary,
            'cloud_people': advisory.cloud_people, 'edge_people': advisory.edge_people,
            'missed': [list(b) for b in advisory.missed],
            'false_alarms': [list(b) for b in advisory.false_alarms],
            'similar': [dict(s) for s in advisory.similar]}


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
        raise SchemaError(f'{where} must be an integer in [0, 10000]')
    return value


def _boxes(value: Any, where: str) -> tuple[tuple[float, float, float, float], ...]:
    if not isinstance(value, list) or len(value) > MAX_BOXES:
        raise SchemaError(f'{where} must be a list of at most {MAX_BOXES} boxes')
    out = []
    for n, box in enumerate(value):
        if not isinstance(box, list) or len(box) != 4:
            raise SchemaError(f'{where}[{n}] must be [x1, y1, x2, y2]')
        x1, y1, x2, y2 = (_number(v, f'{where}[{n}]', -1e5, 1e5) for v in box)
        out.append((x1, y1, x2, y2))
    return tuple(out)


def _similar(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or len(value) > MAX_SIMILAR:
        raise SchemaError(f'similar must be a list of at most {MAX_SIMILAR} entries')
    out = []
    for n, item in enumerate(value):
        obj = _fields(item, f'similar[{n}]', {'robot_id', 'seq', 'label', 'similarity'})
        label = obj['label']
        if not isinstance(label, str) or len(label) > 200 or not label.isprintable():
            raise SchemaError(f'similar[{n}].label must be printable text of at most 200 chars')
        out.append({'robot_id': _text(obj['robot_id'], f'similar[{n}].robot_id'),
                    'seq': _version(obj['seq'], f'similar[{n}].seq'), 'label': label,
                    'similarity': _number(obj['similarity'], f'similar[{n}].similarity',
                                          -1.0, 1.0)})
    return tuple(out)


def validate_advisory(data: Any) -> Advisory:
    """Check a decoded advisory JSON object against the v1 schema."""
    obj = _fields(data, 'advisory', {'schema', 'kind', 'command_id', 'robot_id', 'issued_at',
                                      'valid_until', 'upload', 'verdict', 'summary',
                                      'cloud_people', 'edge_people', 'missed', 'false_alarms',
                                      'similar'})
    if obj['schema'] != ADVISORY_SCHEMA:
        raise SchemaError(f'schema {str(obj["schema"])[:80]!r} is not {ADVISORY_SCHEMA!r}')
    if obj['kind'] != 'advisory':
        raise SchemaError(f'kind {str(obj["kind"])[:40]!r} is not "advisory"')
    issued, until = _unix(obj['issued_at'], 'issued_at'), _unix(obj['valid_until'],
                                                                   'valid_until')
    if until <= issued:
        raise SchemaError('valid_until must be after issued_at')
    upload = _fields(obj['upload'], 'upload', {'kind', 'seq'})
    kind = _text(upload['kind'], 'upload.kind')
    if not kind.startswith(UPLINK_BRANCHES):
        raise SchemaError('upload.kind must be an events/... or telemetry/... topic')
    if obj['verdict'] not in VERDICTS:
        raise SchemaError(f'verdict {str(obj["verdict"])[:40]!r} is not one of {VERDICTS}')
    summary = obj['summary']
    if not isinstance(summary, str) or len(summary) > MAX_SUMMARY or not summary.isprintable():
        raise SchemaError(f'summary must be printable text of at most {MAX_SUMMARY} chars')
    return Advisory(_text(obj['command_id'], 'command_id'), _text(obj['robot_id'], 'robot_id'),
                    issued, until, kind, _version(upload['seq'], 'upload.seq'), obj['verdict'],
                    summary, _count(obj['cloud_people'], 'cloud_people'),
                    _count(obj['edge_people'], 'edge_people'),
                    _boxes(obj['missed'], 'missed'), _boxes(obj['false_alarms'], 'false_alarms'),
                    _similar(obj['similar']))
