"""The model card, version 1: what one model version carries in the registry.

A card is JSON, checked field by field with no unknown fields allowed::

    {
      "schema": "cobot_hybrid/model_card/v1",
      "model": {"name": "yolo11n-pose", "version": 3, "sha256": "<64 hex>",
                "size_bytes": 11800000, "imgsz": 320, "task": "pose",
                "precision": "fp32", "format": "onnx"},          # a ModelRef (model_update)
      "classes": ["person"],                                      # class index -> name
      "settings": {"conf": 0.25, "iou": 0.45, "max_det": 100},    # what the detector needs
      "metrics": {"images": 5,                       # evaluation images (held out)
                  "agreement": 0.97,                 # recall of the champion's boxes, or null
                  "champion_sha256": "<64 hex>",     # the champion it was compared with, or null
                  "latency_p50_ms": 24.1, "latency_p99_ms": 31.0},
      "created_at": 1795790000.0                     # unix s
    }

``cobot-hybrid model-card`` (perception) measures a card from the model file;
``cobot-hybrid model register`` (planner) stores it with the file. The settings' names and
bounds are the detector's (``DetectorConfig`` ``conf``, ``iou``, ``max_det``), given here as
constants because the protocol imports nothing of ours; a test holds them equal.
``agreement`` and ``champion_sha256`` are both null (nothing to compare with: the first
version) or both set. Every number is finite and bounded; :func:`validate_card` raises
:class:`SchemaError` naming the first field that is wrong.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobot_hybrid_protocol import model_update
from cobot_hybrid_protocol.errors import PayloadError, SchemaError
from cobot_hybrid_protocol.limits import ID_MAX, Limits, read_json_file, refusal
from cobot_hybrid_protocol.mission import MAX_UNIX_S, MAX_VERSION, MIN_UNIX_S, _fields, _number
from cobot_hybrid_protocol.model_update import (
    ModelRef,
    is_sha256,
    model_ref_to_json,
    validate_model_ref,
)

__all__ = ['CARD_LIMITS', 'CARD_SCHEMA', 'CARD_SCHEMA_ID', 'CONF_RANGE', 'IOU_RANGE',
           'MAX_CLASSES', 'MAX_CLASS_NAME', 'MAX_DET_RANGE', 'MAX_IMAGES', 'MAX_LATENCY_MS',
           'CardMetrics', 'DetectorSettings', 'ModelCard', 'card_text', 'card_to_json',
           'read_card', 'validate_card', 'write_card']

CARD_SCHEMA_ID = 'cobot_hybrid/model_card/v1'
#: The detector's bounds (``cobot_hybrid_perception.detector.DetectorConfig``).
CONF_RANGE = (0.0, 1.0)
IOU_RANGE = (0.0, 1.0)
MAX_DET_RANGE = (1, 10_000)
MAX_CLASSES = 1000          # COCO has 80; the registry keeps the list as one tag (100 kB)
MAX_CLASS_NAME = 64
MAX_IMAGES = 100_000        # as many frames as ``cobot-hybrid bench`` reads
MAX_LATENCY_MS = 60_000.0
#: A card file: small and shallow (the largest valid card is about 70 kB).
CARD_LIMITS = Limits(max_bytes=256 * 1024, max_depth=4, max_string=1024,
                     max_items=MAX_CLASSES, max_values=MAX_CLASSES + 64, unique_keys=True)


@dataclass(frozen=True)
class DetectorSettings:
    """The detector settings a model version is meant to run with."""

    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 100


@dataclass(frozen=True)
class CardMetrics:
    """What the version measured on its evaluation images."""

    images: int
    latency_p50_ms: float
    latency_p99_ms: float
    agreement: float | None = None       # recall of the champion's boxes at IoU 0.5
    champion_sha256: str | None = None   # which champion


@dataclass(frozen=True)
class ModelCard:
    """A validated model card."""

    model: ModelRef
    classes: tuple[str, ...]
    settings: DetectorSettings
    metrics: CardMetrics
    created_at: float

    def __post_init__(self) -> None:   # one rule for what is built and what is read
        validate_card(card_to_json(self))


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SchemaError(f'{where} must be an integer in [{low}, {high}]')
    return value


def _classes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CLASSES:
        raise SchemaError(f'classes must be a list of 1 to {MAX_CLASSES} class names')
    for index, name in enumerate(value):
        if not isinstance(name, str) or not 0 < len(name) <= MAX_CLASS_NAME \
                or not name.isprintable():
            raise SchemaError(f'classes[{index}] must be a non-empty printable string of at '
                              f'most {MAX_CLASS_NAME} chars')
    return tuple(value)


def _settings(data: Any) -> DetectorSettings:
    obj = _fields(data, 'settings', {'conf', 'iou', 'max_det'})
    return DetectorSettings(_number(obj['conf'], 'settings.conf', *CONF_RANGE),
                            _number(obj['iou'], 'settings.iou', *IOU_RANGE),
                            _int(obj['max_det'], 'settings.max_det', *MAX_DET_RANGE))


def _metrics(data: Any) -> CardMetrics:
    obj = _fields(data, 'metrics', {'images', 'agreement', 'champion_sha256',
                                    'latency_p50_ms', 'latency_p99_ms'})
    images = _int(obj['images'], 'metrics.images', 1, MAX_IMAGES)
    p50 = _number(obj['latency_p50_ms'], 'metrics.latency_p50_ms', 0.0, MAX_LATENCY_MS)
    p99 = _number(obj['latency_p99_ms'], 'metrics.latency_p99_ms', 0.0, MAX_LATENCY_MS)
    if p99 < p50:
        raise SchemaError('metrics.latency_p99_ms must be at least metrics.latency_p50_ms')
    agreement, champion = obj['agreement'], obj['champion_sha256']
    if (agreement is None) != (champion is None):
        raise SchemaError('metrics.agreement and metrics.champion_sha256 are both null (no '
                          'champion) or both set')
    if agreement is not None:
        agreement = _number(agreement, 'metrics.agreement', 0.0, 1.0)
        if not is_sha256(champion):
            raise SchemaError('metrics.champion_sha256 must be a sha256 digest: 64 lower-case '
                              'hex characters')
    return CardMetrics(images, p50, p99, agreement, champion)


def validate_card(data: Any) -> ModelCard:
    """Check a decoded model card JSON object against the v1 schema."""
    obj = _fields(data, 'model card', {'schema', 'model', 'classes', 'settings', 'metrics',
                                       'created_at'})
    if obj['schema'] != CARD_SCHEMA_ID:
        raise SchemaError(f'schema {str(obj["schema"])[:80]!r} is not {CARD_SCHEMA_ID!r}')
    card = object.__new__(ModelCard)   # validated here: skip __post_init__'s second pass
    for name, value in (
            ('model', validate_model_ref(obj['model'])),
            ('classes', _classes(obj['classes'])),
            ('settings', _settings(obj['settings'])),
            ('metrics', _metrics(obj['metrics'])),
            ('created_at', _number(obj['created_at'], 'created_at', MIN_UNIX_S, MAX_UNIX_S))):
        object.__setattr__(card, name, value)
    return card


def card_to_json(card: ModelCard) -> dict[str, Any]:
    """Return the v1 JSON object of a model card."""
    s, m = card.settings, card.metrics
    return {'schema': CARD_SCHEMA_ID, 'model': model_ref_to_json(card.model),
            'classes': list(card.classes),
            'settings': {'conf': s.conf, 'iou': s.iou, 'max_det': s.max_det},
            'metrics': {'images': m.images, 'agreement': m.agreement,
                        'champion_sha256': m.champion_sha256,
                        'latency_p50_ms': m.latency_p50_ms, 'latency_p99_ms': m.latency_p99_ms},
            'created_at': card.created_at}


def card_text(card: ModelCard) -> str:
    """Return the card as JSON text for files and the registry (sorted keys, indented)."""
    return json.dumps(card_to_json(card), indent=2, sort_keys=True) + '\n'


def read_card(path: Path) -> ModelCard:
    """Read and check a card file; SchemaError naming the file when it is not a valid card.

    ``FileNotFoundError`` / ``OSError`` pass through (the caller says what a missing file
    means), like :func:`~cobot_hybrid_protocol.limits.read_json_file`.
    """
    try:
        data = read_json_file(path, CARD_LIMITS, what=f'model card {path}')
    except PayloadError as exc:
        raise SchemaError(f'model card {path} {refusal(exc, CARD_LIMITS)}') from None
    try:
        return validate_card(data)
    except SchemaError as exc:
        raise SchemaError(f'model card {path}: {exc}') from None


def write_card(card: ModelCard, path: Path) -> Path:
    """Write the card to ``path`` atomically (a reader sees the old file or the whole new one)."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent or Path('.'), prefix=f'.{path.name}.')
    try:
        with os.fdopen(handle, 'w', encoding='utf-8') as out:
            out.write(card_text(card))
        os.chmod(temporary, 0o644)   # mkstemp makes it 0600: a card is for others to read
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


# --- JSON Schema (draft-07), for the lead's schemas.py ------------------------------------------

def _num(low: float, high: float) -> dict[str, Any]:
    return {'type': 'number', 'minimum': low, 'maximum': high}


def _obj(properties: dict[str, Any]) -> dict[str, Any]:
    return {'type': 'object', 'additionalProperties': False, 'required': sorted(properties),
            'properties': properties}


_SHA = {'type': 'string', 'pattern': '^[0-9a-f]{64}$'}
#: The card's JSON Schema, from the same constants (``schemas.py`` is to take it in).
CARD_SCHEMA: dict[str, Any] = _obj({
    'schema': {'const': CARD_SCHEMA_ID},
    'model': _obj({
        'name': {'type': 'string', 'minLength': 1, 'maxLength': ID_MAX},
        'version': {'type': 'integer', 'minimum': 1, 'maximum': MAX_VERSION},
        'sha256': _SHA,
        'size_bytes': {'type': 'integer', 'minimum': 1,
                       'maximum': model_update.MAX_MODEL_BYTES},
        'imgsz': {'type': 'integer', 'minimum': 32, 'maximum': model_update.MAX_IMGSZ},
        'task': {'enum': list(model_update.TASKS)},
        'precision': {'enum': list(model_update.PRECISIONS)},
        'format': {'enum': list(model_update.FORMATS)}}),
    'classes': {'type': 'array', 'minItems': 1, 'maxItems': MAX_CLASSES,
                'items': {'type': 'string', 'minLength': 1, 'maxLength': MAX_CLASS_NAME}},
    'settings': _obj({'conf': _num(*CONF_RANGE), 'iou': _num(*IOU_RANGE),
                      'max_det': {'type': 'integer', 'minimum': MAX_DET_RANGE[0],
                                  'maximum': MAX_DET_RANGE[1]}}),
    'metrics': _obj({
        'images': {'type': 'integer', 'minimum': 1, 'maximum': MAX_IMAGES},
        'agreement': {'oneOf': [{'type': 'null'}, _num(0.0, 1.0)]},
        'champion_sha256': {'oneOf': [{'type': 'null'}, _SHA]},
        'latency_p50_ms': _num(0.0, MAX_LATENCY_MS),
        'latency_p99_ms': _num(0.0, MAX_LATENCY_MS)}),
    'created_at': _num(MIN_UNIX_S, MAX_UNIX_S),
})
