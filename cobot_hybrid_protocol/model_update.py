"""Model updates over the air, version 1: the command down, the status and metrics up.

The cloud sends a signed ``cmd/model`` (inside the signed envelope of
:mod:`cobot_hybrid_protocol.signing`, like a mission)::

    {
      "schema": "cobot_hybrid/model_command/v1", "kind": "model",
      "command_id": "r-7-cobot-3-12",     # unique per command (replay protection)
      "robot_id": "cobot-3",
      "rollout_id": "r-7",
      "revision": 12,                     # per robot: a higher revision supersedes
      "issued_at": 1795790000.0, "valid_until": 1795876400.0,
      "action": "install",                # install | rollback
      "model": {"name": "yolo11n-pose", "version": 3, "sha256": "<64 hex>",
                "size_bytes": 11800000, "format": "onnx", "imgsz": 320, "task": "pose",
                "precision": "fp32"},
      "source": {"kind": "mqtt", "chunk_bytes": 131072},   # or {"kind": "http", "url": ...}
      "acceptance": {"min_agreement": 0.9, "max_latency_ms": 250.0, "smoke_frames": 8,
                     "max_restarts": 2, "watch_s": 60.0}
    }

``install`` fetches the file (unless the robot holds it), checks its size and sha256, loads
it beside the running model, runs the smoke check on stored frames (finite outputs, latency
p99 within ``max_latency_ms``, agreement with the running model at least ``min_agreement``)
and only then swaps. ``rollback`` returns to ``model`` (a version the robot ran before):
no smoke check, the robot keeps its known-good versions. A crash loop after a swap (more than
``max_restarts`` restarts within ``watch_s``) rolls back on the robot's own.

Why chunks over MQTT (``source.kind = mqtt``): a robot on a factory network usually reaches
only the broker (one outbound port, its certificate, its ACL); pulling the file through the
same connection needs no second path, no second credential, and the broker's ACL keeps each
robot to its own prefix. The robot asks for a window of chunks at a time
(``events/blob_request``, :class:`BlobRequest`), which gives resume (it asks from what it has)
and a bandwidth cap (it asks no faster than its cap); the cloud answers each on
``cobot/v1/<robot_id>/blob/<sha256>/<offset>`` with the raw bytes. The chunks are not signed
one by one: the sha256 in the signed command authenticates the whole file. ``http`` (a URL of
the artifact store, fetched with Range requests) is there for robots that reach it.

Up, the robot reports each step (``events/model_status``, :class:`ModelStatus`) and, every
period, what the running model did (``events/model_metrics``, :class:`ModelMetrics`: a
summary, never frames), both tagged with the model version, for the rollout's gates.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from cobot_hybrid_protocol.errors import SchemaError
from cobot_hybrid_protocol.limits import ID_MAX, is_name
from cobot_hybrid_protocol.mission import (
    MAX_REASON,
    _fields,
    _number,
    _text,
    _unix,
    _version,
)

__all__ = ['ACTIONS', 'BLOB_REQUEST_SCHEMA', 'FAILURE_REASONS', 'FORMATS',
           'MAX_FETCH_BYTES_PER_S',
           'MAX_CHUNK_BYTES', 'MAX_MODEL_BYTES', 'METRICS_SCHEMA', 'MODEL_COMMAND_SCHEMA',
           'MODEL_STATES', 'PRECISIONS', 'STATUS_SCHEMA', 'Acceptance', 'BlobRequest',
           'ModelCommand', 'ModelMetrics', 'ModelRef', 'ModelStatus', 'Source',
           'blob_request_to_json', 'command_to_json', 'file_digest', 'is_sha256',
           'metrics_to_json', 'model_ref_to_json', 'status_to_json', 'validate_blob_request',
           'validate_model_command', 'validate_model_ref', 'validate_metrics',
           'validate_source', 'validate_status']

MODEL_COMMAND_SCHEMA = 'cobot_hybrid/model_command/v1'
STATUS_SCHEMA = 'cobot_hybrid/model_status/v1'
METRICS_SCHEMA = 'cobot_hybrid/model_metrics/v1'
BLOB_REQUEST_SCHEMA = 'cobot_hybrid/blob_request/v1'
ACTIONS = ('install', 'rollback')
FORMATS = ('onnx',)
PRECISIONS = ('fp32', 'fp16', 'int8')
TASKS = ('detect', 'pose')
SOURCE_KINDS = ('mqtt', 'http')
MAX_MODEL_BYTES = 2 * 1024**3          # 2 GiB: larger is not a detector for a Jetson
MIN_CHUNK_BYTES, MAX_CHUNK_BYTES = 4 * 1024, 256 * 1024
MAX_IMGSZ = 4096
#: The highest download rate a robot may ask for, and what the cloud serves one robot at most.
MAX_FETCH_BYTES_PER_S = 8e6
MAX_URL = 2048
#: Every state a robot reports, in the order an install goes through them.
MODEL_STATES = ('received', 'downloading', 'verifying', 'loading', 'smoke_testing', 'active',
                'failed', 'rolled_back')
#: The reason codes of ``failed`` / ``rolled_back`` (the status's ``reason`` starts with one).
FAILURE_REASONS = ('download_failed', 'download_timeout', 'size_mismatch', 'hash_mismatch',
                   'no_space', 'load_failed', 'not_finite', 'too_slow', 'disagrees',
                   'crash_loop', 'not_cached', 'superseded', 'rejected', 'internal_error')
_SHA256 = re.compile(r'[0-9a-f]{64}')
_DIGEST_BLOCK = 1024 * 1024


def file_digest(path: str | os.PathLike[str], limit: int | None = None) -> tuple[str, int]:
    """Return (sha256 hex, size) of a file: what a :class:`ModelRef` names it by.

    With ``limit``, at most ``limit`` + 1 bytes are read (a file larger than the signed size
    is known to be wrong without reading all of it).
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, 'rb') as handle:
        while block := handle.read(_DIGEST_BLOCK if limit is None
                                   else min(_DIGEST_BLOCK, limit + 1 - size)):
            digest.update(block)
            size += len(block)
            if limit is not None and size > limit:
                break
    return digest.hexdigest(), size


def is_sha256(value: Any) -> bool:
    """Whether ``value`` is a lower-case hex sha256 digest."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def _sha(value: Any, where: str) -> str:
    if not is_sha256(value):
        raise SchemaError(f'{where} must be a sha256 digest: 64 lower-case hex characters')
    return str(value)


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SchemaError(f'{where} must be an integer in [{low}, {high}]')
    return value


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SchemaError(f'{where} {str(value)[:40]!r} is not one of {choices}')
    return str(value)


def _reason(value: Any, where: str = 'reason') -> str:
    if not isinstance(value, str) or len(value) > MAX_REASON or '\0' in value:
        raise SchemaError(f'{where} must be a string of at most {MAX_REASON} chars')
    return value


@dataclass(frozen=True)
class ModelRef:
    """One model version: what it is and how to recognise its file."""

    name: str
    version: int
    sha256: str
    size_bytes: int
    imgsz: int
    task: str = 'pose'
    precision: str = 'fp32'
    format: str = 'onnx'

    def __post_init__(self) -> None:   # one rule for what is built and what is read
        validate_model_ref(model_ref_to_json(self))

    @property
    def label(self) -> str:
        """``name v3 (sha256 prefix)``: how logs and statuses name it."""
        return f'{self.name} v{self.version} ({self.sha256[:12]})'


def validate_model_ref(data: Any, where: str = 'model') -> ModelRef:
    """Check a decoded model reference."""
    obj = _fields(data, where, {'name', 'version', 'sha256', 'size_bytes', 'imgsz', 'task',
                                'precision', 'format'})
    ref = object.__new__(ModelRef)    # validated here: skip __post_init__'s second pass
    for name, value in (
            ('name', _text(obj['name'], f'{where}.name')),
            ('version', _version(obj['version'], f'{where}.version')),
            ('sha256', _sha(obj['sha256'], f'{where}.sha256')),
            ('size_bytes', _int(obj['size_bytes'], f'{where}.size_bytes', 1,
                                MAX_MODEL_BYTES)),
            ('imgsz', _int(obj['imgsz'], f'{where}.imgsz', 32, MAX_IMGSZ)),
            ('task', _choice(obj['task'], f'{where}.task', TASKS)),
            ('precision', _choice(obj['precision'], f'{where}.precision', PRECISIONS)),
            ('format', _choice(obj['format'], f'{where}.format', FORMATS))):
        object.__setattr__(ref, name, value)
    return ref


def model_ref_to_json(ref: ModelRef) -> dict[str, Any]:
    """Return the JSON object of a model reference."""
    return {'name': ref.name, 'version': ref.version, 'sha256': ref.sha256,
            'size_bytes': ref.size_bytes, 'imgsz': ref.imgsz, 'task': ref.task,
            'precision': ref.precision, 'format': ref.format}


@dataclass(frozen=True)
class Source:
    """Where the robot fetches the file: chunks over MQTT, or an HTTP URL."""

    kind: str = 'mqtt'
    chunk_bytes: int = 128 * 1024     # mqtt
    url: str = ''                     # http


@dataclass(frozen=True)
class Acceptance:
    """What the robot checks on its own before and after it swaps to the new model."""

    min_agreement: float = 0.9        # matched detections with the running model [0, 1]
    max_latency_ms: float = 250.0     # p99 of the smoke frames
    smoke_frames: int = 8
    max_restarts: int = 2             # within watch_s of the swap: a crash loop
    watch_s: float = 60.0


@dataclass(frozen=True)
class ModelCommand:
    """A validated model command."""

    command_id: str
    robot_id: str
    rollout_id: str
    revision: int
    issued_at: float
    valid_until: float
    action: str
    model: ModelRef
    source: Source = field(default_factory=Source)
    acceptance: Acceptance = field(default_factory=Acceptance)

    # The replay store keeps the highest accepted version of each stream: a model command's
    # stream is the robot's model slot, its version the revision.
    @property
    def stream(self) -> str:
        """The replay store's key: one model slot per robot."""
        return 'model'

    @property
    def version(self) -> int:
        """The replay store's ordering: the revision."""
        return self.revision


def validate_source(data: Any) -> Source:
    """Check a decoded source (``{"kind": "mqtt", ...}`` or ``{"kind": "http", "url": ...}``)."""
    return _source(data)


def _source(data: Any) -> Source:
    obj = _fields(data, 'source', {'kind'}, frozenset({'chunk_bytes', 'url'}))
    kind = _choice(obj['kind'], 'source.kind', SOURCE_KINDS)
    if kind == 'mqtt':
        if 'url' in obj:
            raise SchemaError('source.url belongs to kind http')
        return Source('mqtt', _int(obj.get('chunk_bytes', Source.chunk_bytes),
                                   'source.chunk_bytes', MIN_CHUNK_BYTES, MAX_CHUNK_BYTES))
    url = obj.get('url')
    if 'chunk_bytes' in obj:
        raise SchemaError('source.chunk_bytes belongs to kind mqtt')
    if not isinstance(url, str) or len(url) > MAX_URL or not url.isprintable() \
            or not url.startswith(('http://', 'https://')):
        raise SchemaError(f'source.url must be an http(s) URL of at most {MAX_URL} chars')
    return Source('http', url=url)


def _acceptance(data: Any) -> Acceptance:
    obj = _fields(data, 'acceptance', {'min_agreement', 'max_latency_ms', 'smoke_frames',
                                       'max_restarts', 'watch_s'})
    return Acceptance(_number(obj['min_agreement'], 'acceptance.min_agreement', 0.0, 1.0),
                      _number(obj['max_latency_ms'], 'acceptance.max_latency_ms', 1.0,
                              60_000.0),
                      _int(obj['smoke_frames'], 'acceptance.smoke_frames', 1, 256),
                      _int(obj['max_restarts'], 'acceptance.max_restarts', 0, 100),
                      _number(obj['watch_s'], 'acceptance.watch_s', 0.0, 86_400.0))


def validate_model_command(data: Any) -> ModelCommand:
    """Check a decoded model command JSON object against the v1 schema."""
    obj = _fields(data, 'model command', {'schema', 'kind', 'command_id', 'robot_id',
                                          'rollout_id', 'revision', 'issued_at',
                                          'valid_until', 'action', 'model', 'source',
                                          'acceptance'})
    if obj['schema'] != MODEL_COMMAND_SCHEMA:
        raise SchemaError(f'schema {str(obj["schema"])[:80]!r} is not '
                          f'{MODEL_COMMAND_SCHEMA!r}')
    if obj['kind'] != 'model':
        raise SchemaError(f'kind {str(obj["kind"])[:40]!r} is not "model"')
    issued, until = _unix(obj['issued_at'], 'issued_at'), _unix(obj['valid_until'],
                                                                   'valid_until')
    if until <= issued:
        raise SchemaError('valid_until must be after issued_at')
    return ModelCommand(_text(obj['command_id'], 'command_id'),
                        _text(obj['robot_id'], 'robot_id'),
                        _text(obj['rollout_id'], 'rollout_id'),
                        _version(obj['revision'], 'revision'), issued, until,
                        _choice(obj['action'], 'action', ACTIONS),
                        validate_model_ref(obj['model']), _source(obj['source']),
                        _acceptance(obj['acceptance']))


def command_to_json(command: ModelCommand) -> dict[str, Any]:
    """Return the v1 JSON object of a model command (what the cloud signs)."""
    source: dict[str, Any] = {'kind': command.source.kind}
    if command.source.kind == 'mqtt':
        source['chunk_bytes'] = command.source.chunk_bytes
    else:
        source['url'] = command.source.url
    a = command.acceptance
    return {'schema': MODEL_COMMAND_SCHEMA, 'kind': 'model',
            'command_id': command.command_id, 'robot_id': command.robot_id,
            'rollout_id': command.rollout_id, 'revision': command.revision,
            'issued_at': command.issued_at, 'valid_until': command.valid_until,
            'action': command.action, 'model': model_ref_to_json(command.model),
            'source': source,
            'acceptance': {'min_agreement': a.min_agreement, 'max_latency_ms': a.max_latency_ms,
                           'smoke_frames': a.smoke_frames, 'max_restarts': a.max_restarts,
                           'watch_s': a.watch_s}}


# --- up: status --------------------------------------------------------------------------------

_STATUS_METRICS = ('agreement', 'latency_p99_ms', 'smoke_frames', 'swap_ms', 'bytes_fetched')


@dataclass(frozen=True)
class ModelStatus:
    """One step of a model command on the robot, or the robot's model after a restart."""

    state: str
    rollout_id: str = ''             # '' when not about a command (a restart, a crash loop)
    revision: int = 0                # 0 likewise
    model: ModelRef | None = None    # the version the step is about
    active: ModelRef | None = None   # what the detector runs now
    reason: str = ''                 # '<code>: <detail>' of failed / rolled_back
    metrics: dict[str, float] = field(default_factory=dict)
    stamp: float = 0.0

    def __post_init__(self) -> None:
        validate_status(status_to_json(self))

    @property
    def code(self) -> str:
        """The reason code before the first colon (``hash_mismatch``, ``too_slow``...)."""
        return self.reason.split(':', 1)[0].strip()


def validate_status(data: Any) -> ModelStatus:
    """Check a decoded model status JSON object against the v1 schema."""
    obj = _fields(data, 'model status', {'schema', 'state', 'rollout_id', 'revision', 'model',
                                         'active', 'reason', 'metrics', 'stamp'})
    if obj['schema'] != STATUS_SCHEMA:
        raise SchemaError(f'schema {str(obj["schema"])[:80]!r} is not {STATUS_SCHEMA!r}')
    state = _choice(obj['state'], 'state', MODEL_STATES)
    rollout_id = obj['rollout_id']
    if rollout_id != '' and not is_name(rollout_id, ID_MAX):
        raise SchemaError('rollout_id must be empty or printable text')
    revision = obj['revision']
    revision = 0 if revision == 0 and not isinstance(revision, bool) else \
        _version(revision, 'revision')
    reason = _reason(obj['reason'])
    if state in ('failed', 'rolled_back') and reason.split(':', 1)[0] not in FAILURE_REASONS:
        raise SchemaError(f'the reason of {state} must start with one of {FAILURE_REASONS}')
    metrics = obj['metrics']
    if not isinstance(metrics, dict) or set(metrics) - set(_STATUS_METRICS):
        raise SchemaError(f'metrics must be an object of {_STATUS_METRICS}')
    checked = {k: _number(v, f'metrics.{k}', 0.0, 1e12) for k, v in metrics.items()}
    model = None if obj['model'] is None else validate_model_ref(obj['model'])
    active = None if obj['active'] is None else validate_model_ref(obj['active'], 'active')
    status = object.__new__(ModelStatus)
    for name, value in (('state', state), ('rollout_id', rollout_id), ('revision', revision),
                        ('model', model), ('active', active), ('reason', reason),
                        ('metrics', checked), ('stamp', _unix(obj['stamp'], 'stamp'))):
        object.__setattr__(status, name, value)
    return status


def status_to_json(status: ModelStatus) -> dict[str, Any]:
    """Return the v1 JSON object of a model status."""
    return {'schema': STATUS_SCHEMA, 'state': status.state, 'rollout_id': status.rollout_id,
            'revision': status.revision,
            'model': None if status.model is None else model_ref_to_json(status.model),
            'active': None if status.active is None else model_ref_to_json(status.active),
            'reason': status.reason, 'metrics': dict(status.metrics), 'stamp': status.stamp}


# --- up: metrics -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelMetrics:
    """What the running model did over one period: the input of the rollout's gates."""

    model: ModelRef
    window_s: float
    frames: int
    errors: int
    latency_p50_ms: float
    latency_p99_ms: float
    detections_mean: float
    stamp: float

    def __post_init__(self) -> None:
        validate_metrics(metrics_to_json(self))


def validate_metrics(data: Any) -> ModelMetrics:
    """Check a decoded model metrics JSON object against the v1 schema."""
    obj = _fields(data, 'model metrics', {'schema', 'model', 'window_s', 'frames', 'errors',
                                          'latency_p50_ms', 'latency_p99_ms',
                                          'detections_mean', 'stamp'})
    if obj['schema'] != METRICS_SCHEMA:
        raise SchemaError(f'schema {str(obj["schema"])[:80]!r} is not {METRICS_SCHEMA!r}')
    metrics = object.__new__(ModelMetrics)
    for name, value in (
            ('model', validate_model_ref(obj['model'])),
            ('window_s', _number(obj['window_s'], 'window_s', 0.0, 86_400.0)),
            ('frames', _int(obj['frames'], 'frames', 0, 10**9)),
            ('errors', _int(obj['errors'], 'errors', 0, 10**9)),
            ('latency_p50_ms', _number(obj['latency_p50_ms'], 'latency_p50_ms', 0.0, 1e6)),
            ('latency_p99_ms', _number(obj['latency_p99_ms'], 'latency_p99_ms', 0.0, 1e6)),
            ('detections_mean', _number(obj['detections_mean'], 'detections_mean', 0.0,
                                        1e4)),
            ('stamp', _unix(obj['stamp'], 'stamp'))):
        object.__setattr__(metrics, name, value)
    return metrics


def metrics_to_json(metrics: ModelMetrics) -> dict[str, Any]:
    """Return the v1 JSON object of a model metrics summary."""
    return {'schema': METRICS_SCHEMA, 'model': model_ref_to_json(metrics.model),
            'window_s': metrics.window_s, 'frames': metrics.frames, 'errors': metrics.errors,
            'latency_p50_ms': metrics.latency_p50_ms, 'latency_p99_ms': metrics.latency_p99_ms,
            'detections_mean': metrics.detections_mean, 'stamp': metrics.stamp}


# --- up: a window of chunks --------------------------------------------------------------------

@dataclass(frozen=True)
class BlobRequest:
    """The robot asks for ``length`` bytes of a file from ``offset`` (chunks over MQTT)."""

    sha256: str
    offset: int
    length: int
    chunk_bytes: int

    def __post_init__(self) -> None:
        validate_blob_request(blob_request_to_json(self))


def validate_blob_request(data: Any) -> BlobRequest:
    """Check a decoded blob request (the offset on a chunk boundary, at most 64 chunks)."""
    obj = _fields(data, 'blob request', {'schema', 'sha256', 'offset', 'length',
                                         'chunk_bytes'})
    if obj['schema'] != BLOB_REQUEST_SCHEMA:
        raise SchemaError(f'schema {str(obj["schema"])[:80]!r} is not '
                          f'{BLOB_REQUEST_SCHEMA!r}')
    chunk = _int(obj['chunk_bytes'], 'chunk_bytes', MIN_CHUNK_BYTES, MAX_CHUNK_BYTES)
    offset = _int(obj['offset'], 'offset', 0, MAX_MODEL_BYTES)
    length = _int(obj['length'], 'length', 1, 64 * chunk)
    if offset % chunk:
        raise SchemaError('offset must be a multiple of chunk_bytes')
    request = object.__new__(BlobRequest)
    for name, value in (('sha256', _sha(obj['sha256'], 'sha256')), ('offset', offset),
                        ('length', length), ('chunk_bytes', chunk)):
        object.__setattr__(request, name, value)
    return request


def blob_request_to_json(request: BlobRequest) -> dict[str, Any]:
    """Return the v1 JSON object of a blob request."""
    return {'schema': BLOB_REQUEST_SCHEMA, 'sha256': request.sha256, 'offset': request.offset,
            'length': request.length, 'chunk_bytes': request.chunk_bytes}


def finite_or_zero(value: float) -> float:
    """Return a metric as JSON can carry it (NaN and infinities as 0: no measurement)."""
    return value if math.isfinite(value) else 0.0


# --- on the robot: the bridge hands a fetched file to the detector ---------------------------

LOCAL_UPDATE_SCHEMA = 'cobot_hybrid/model_update/v1'
MAX_PATH = 4096


@dataclass(frozen=True)
class LocalUpdate:
    """What the bridge publishes on ROS ``model_update`` (``std_msgs/String`` JSON).

    ``command`` is the signed envelope exactly as it came down: the detector opens it with the
    cloud's keys itself, so nothing on the DDS domain can make it load a file the cloud did
    not sign. ``path`` is the fetched file (checked against the signed size and sha256 again
    before use); empty for a rollback to a version the detector keeps.
    """

    command: str
    path: str = ''

    def __post_init__(self) -> None:
        validate_local_update(local_update_to_json(self))


def validate_local_update(data: Any) -> LocalUpdate:
    """Check a decoded local update."""
    obj = _fields(data, 'model update', {'schema', 'command', 'path'})
    if obj['schema'] != LOCAL_UPDATE_SCHEMA:
        raise SchemaError(f'schema {str(obj["schema"])[:80]!r} is not {LOCAL_UPDATE_SCHEMA!r}')
    command, path = obj['command'], obj['path']
    if not isinstance(command, str) or not 0 < len(command) <= 256 * 1024:
        raise SchemaError('command must be the signed envelope as text (at most 256 KiB)')
    if not isinstance(path, str) or len(path) > MAX_PATH or '\0' in path \
            or (path and not path.startswith('/')):
        raise SchemaError(f'path must be empty or an absolute path of at most {MAX_PATH} chars')
    update = object.__new__(LocalUpdate)
    object.__setattr__(update, 'command', command)
    object.__setattr__(update, 'path', path)
    return update


def local_update_to_json(update: LocalUpdate) -> dict[str, Any]:
    """Return the JSON object of a local update."""
    return {'schema': LOCAL_UPDATE_SCHEMA, 'command': update.command, 'path': update.path}
