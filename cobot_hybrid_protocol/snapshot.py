r"""A camera snapshot as it goes up: the envelope of what it shows, one newline, the JPEG.

::

    {"robot_id":"cobot-1","seq":42,"stamp":1795790000.1,"topic":"image",
     "type":"cobot_hybrid/Snapshot","data":{"image":{...},"trigger":{...},"context":{...}}}\n
    <JPEG bytes>

The header is an uplink envelope (:mod:`~cobot_hybrid_protocol.envelope`: ``seq`` inside, so
a snapshot is acknowledged and de-duplicated like any message, over MQTT 3.1.1 too), written
compact, so its only newline byte is the one that ends it. ``data``:

* ``image``: ``width``, ``height`` [px], ``frame_id``, ``stamp`` (the image's own [unix s]),
  ``bytes`` (the JPEG's length: a cut message is refused, never analysed half);
* ``trigger``: what made the robot send it: ``topic``, ``field``, ``value`` and ``stamp``
  (a protective stop starting, for the default route);
* ``context``: per ROS topic the route names, the newest message the robot had when it sent
  the snapshot, as ``{"stamp": s, "data": {...}}`` (the robot's detections: what the edge
  saw, for the cloud to compare).

:func:`parse_snapshot` reads one back within limits, or raises
:class:`~cobot_hybrid_protocol.errors.SchemaError` /
:class:`~cobot_hybrid_protocol.errors.PayloadError` saying what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cobot_hybrid_protocol.envelope import CONTRACT_TYPES, Envelope, parse_envelope
from cobot_hybrid_protocol.errors import PayloadError, SchemaError
from cobot_hybrid_protocol.limits import Limits, is_name, is_number_in

__all__ = ['HEADER_LIMITS', 'MAX_HEADER_BYTES', 'MAX_SNAPSHOT_BYTES', 'SNAPSHOT_TYPE',
           'Snapshot', 'build_snapshot', 'parse_snapshot']

SNAPSHOT_TYPE = CONTRACT_TYPES['snapshot']
MAX_HEADER_BYTES = 64 * 1024
MAX_SNAPSHOT_BYTES = 8 * 1024 * 1024     # header + JPEG; a 4K JPEG is ~2-4 MB
MAX_SIDE = 16384                          # pixels
HEADER_LIMITS = Limits(max_bytes=MAX_HEADER_BYTES, max_depth=12, max_string=1024,
                        max_items=2000, max_values=20000)
_JPEG_START = b'\xff\xd8\xff'


@dataclass(frozen=True)
class Snapshot:
    """One snapshot, read back: who sent it (``envelope``), what it shows, why, the JPEG."""

    envelope: Envelope
    jpeg: bytes
    width: int
    height: int
    frame_id: str
    image_stamp: float
    trigger: dict[str, Any]
    context: dict[str, dict[str, Any]]


def build_snapshot(header: bytes, jpeg: bytes) -> bytes:
    """Join a compact envelope (``build_envelope``: no newline inside) and the JPEG."""
    if b'\n' in header:
        raise ValueError('a snapshot header is compact JSON without a newline')
    return header + b'\n' + jpeg


def _need(condition: bool, what: str) -> None:
    if not condition:
        raise SchemaError(f'snapshot: {what}')


def parse_snapshot(payload: bytes, max_bytes: int = MAX_SNAPSHOT_BYTES,
                   limits: Limits = HEADER_LIMITS) -> Snapshot:
    """Read a snapshot: its header within ``limits``, its JPEG whole; raise saying why not."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise PayloadError('bad_type', 'a snapshot is bytes')
    payload = bytes(payload)
    if len(payload) > max_bytes:
        raise PayloadError('too_large', f'a snapshot of {len(payload)} bytes is more than '
                           f'{max_bytes}')
    end = payload.find(b'\n', 0, limits.max_bytes + 1)
    if end < 0:
        raise PayloadError('no_header', 'a snapshot starts with its JSON header and one '
                           f'newline within {limits.max_bytes} bytes (is this a bare JPEG '
                           'from an older bridge?)')
    envelope = parse_envelope(payload[:end], limits, 'a snapshot header')
    _need(envelope.type == SNAPSHOT_TYPE, f'type must be {SNAPSHOT_TYPE}, not '
          f'{str(envelope.type)[:80]!r}')
    jpeg = payload[end + 1:]
    data = envelope.data
    image, trigger = data.get('image'), data.get('trigger')
    context = data.get('context', {})
    _need(isinstance(image, dict) and isinstance(trigger, dict) and isinstance(context, dict),
          'data needs the objects image and trigger (and context, if any)')
    assert isinstance(image, dict) and isinstance(trigger, dict) and isinstance(context, dict)
    for name in ('width', 'height'):
        value = image.get(name)
        _need(type(value) is int and 0 < value <= MAX_SIDE,
              f'image.{name} must be an integer in 1..{MAX_SIDE}')
    _need(image.get('bytes') == len(jpeg), f'image.bytes says {str(image.get("bytes"))[:20]} '
          f'but {len(jpeg)} JPEG bytes follow the header (a cut or padded message)')
    _need(jpeg.startswith(_JPEG_START), 'what follows the header is not a JPEG')
    _need(is_name(image.get('frame_id', ''), 256) or image.get('frame_id') == '',
          'image.frame_id must be printable text of at most 256 characters')
    _need(is_number_in(image.get('stamp'), 0.0, 4_102_444_800.0),
          'image.stamp must be unix seconds in [0, 2100)')
    _need(is_name(trigger.get('topic'), 256) and is_name(trigger.get('field'), 256),
          'trigger.topic and trigger.field must be names')
    _need(is_number_in(trigger.get('stamp'), 0.0, 4_102_444_800.0),
          'trigger.stamp must be unix seconds in [0, 2100)')
    for topic, entry in context.items():
        _need(is_name(topic, 256) and isinstance(entry, dict)
              and is_number_in(entry.get('stamp'), 0.0, 4_102_444_800.0)
              and isinstance(entry.get('data'), dict),
              f'context[{str(topic)[:80]!r}] must be {{"stamp": unix s, "data": {{...}}}}')
    return Snapshot(envelope, jpeg, image['width'], image['height'],
                    str(image.get('frame_id', '')), float(image['stamp']), dict(trigger),
                    {str(k): dict(v) for k, v in context.items()})

