"""Which images an INT8 model was calibrated on: the ``<model>.calib.json`` sidecar.

``cobot-hybrid quantize`` writes the record next to the model it produces; ``cobot-hybrid
bench`` reads it and leaves those images out when it scores the INT8 model against FP32,
because agreement measured on the calibration set itself says little about other images.

Images are identified by the SHA-256 of their decoded pixels (shape, dtype and bytes of the
bgr8 array), so a PNG copy of a calibration photo or a frame losslessly extracted from a video
is recognised too; the SHA-256 of the file is kept beside it for people reading the record.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.errors import ModelLoadError
from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.limits import Limits, is_number_in, read_json_file, refusal
from cobot_hybrid_protocol.model_update import file_digest

__all__ = ['CalibrationRecord', 'CalibrationRecordError', 'ImageHash', 'file_sha256',
           'pixels_sha256', 'read_record', 'record_path', 'write_record']

FORMAT = 'cobot_hybrid.int8-calibration/1'
#: A record larger than this is refused (a few hundred bytes per image).
MAX_RECORD_BYTES = 8 * 2**20
MAX_IMAGES = 100_000
MAX_NAME_CHARS = 1_000
MAX_AGREEMENT_FIELDS = 32
#: The record: image lists of hashes, shallow; agreement holds a few numbers and short texts.
RECORD_LIMITS = Limits(max_bytes=MAX_RECORD_BYTES, max_depth=6, max_string=MAX_NAME_CHARS,
                       max_items=MAX_IMAGES, max_values=2_000_000)
_HEX64 = re.compile(r'^[0-9a-f]{64}$')


class CalibrationRecordError(ModelLoadError):
    """A calibration record (``<model>.calib.json``) is unreadable, too large or malformed."""


@dataclass(frozen=True)
class ImageHash:
    """One image: its name or label and the SHA-256 of its pixels (and of its file, if any)."""

    name: str
    pixels_sha256: str
    file_sha256: str = ''


@dataclass(frozen=True)
class CalibrationRecord:
    """The calibration and held-out images of one INT8 model, and their agreement with FP32."""

    int8_model: str
    int8_hash: str
    fp32_model: str
    fp32_hash: str
    calibration: tuple[ImageHash, ...]
    held_out: tuple[ImageHash, ...] = ()
    agreement: dict[str, Any] = field(default_factory=dict)

    @property
    def calibration_pixels(self) -> frozenset[str]:
        """Pixel hashes of the calibration images."""
        return frozenset(image.pixels_sha256 for image in self.calibration)


def pixels_sha256(pixels: npt.NDArray[Any]) -> str:
    """SHA-256 of an image array's shape, dtype and bytes."""
    array = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(f'{array.shape}|{array.dtype.str}|'.encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return file_digest(path)[0]


def record_path(model: Path) -> Path:
    """Where the record of ``model`` lives: ``<model>.calib.json`` beside it."""
    return model.with_name(model.name + '.calib.json')


def write_record(model: Path, record: CalibrationRecord) -> Path:
    """Write the record beside ``model`` (replacing an older one) and return its path."""
    path = record_path(model)
    document = {
        'format': FORMAT, 'int8_model': record.int8_model, 'int8_hash': record.int8_hash,
        'fp32_model': record.fp32_model, 'fp32_hash': record.fp32_hash,
        'calibration': [_image_dict(image) for image in record.calibration],
        'held_out': [_image_dict(image) for image in record.held_out],
        'agreement': record.agreement,
    }
    staged = path.with_name(path.name + '.tmp')
    staged.write_text(json.dumps(document, indent=1) + '\n', encoding='utf-8')
    staged.replace(path)
    return path


def read_record(model: Path) -> CalibrationRecord | None:
    """Read the record of ``model``: None when it has none, CalibrationRecordError if bad."""
    path = record_path(model)
    try:
        document = read_json_file(path, RECORD_LIMITS, 'the file')
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CalibrationRecordError(f'calibration record {path} cannot be read: '
                                     f'{exc.strerror}') from None
    except PayloadError as exc:
        raise CalibrationRecordError(f'calibration record {path} {refusal(exc, RECORD_LIMITS)}; '
                                     'delete it and run `cobot-hybrid quantize` again') from None
    try:
        return _parse(document)
    except CalibrationRecordError as exc:
        raise CalibrationRecordError(f'calibration record {path}: {exc}') from None


def _image_dict(image: ImageHash) -> dict[str, str]:
    return {'name': image.name, 'pixels_sha256': image.pixels_sha256,
            'file_sha256': image.file_sha256}


def _text(value: Any, what: str, pattern: re.Pattern[str] | None = None,
          optional: bool = False) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS:
        raise CalibrationRecordError(f'{what} must be a string of at most {MAX_NAME_CHARS} '
                                     'characters')
    if pattern is not None and not (optional and not value) and not pattern.match(value):
        raise CalibrationRecordError(f'{what} {value[:80]!r} is not a lowercase hex digest')
    return value


def _images(value: Any, what: str) -> tuple[ImageHash, ...]:
    if not isinstance(value, list) or len(value) > MAX_IMAGES:
        raise CalibrationRecordError(f'{what} must be a list of at most {MAX_IMAGES} images')
    images = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise CalibrationRecordError(f'{what}[{i}] must be an object')
        images.append(ImageHash(
            _text(item.get('name'), f'{what}[{i}].name'),
            _text(item.get('pixels_sha256'), f'{what}[{i}].pixels_sha256', _HEX64),
            _text(item.get('file_sha256', ''), f'{what}[{i}].file_sha256', _HEX64,
                  optional=True)))
    return tuple(images)


def _parse(document: Any) -> CalibrationRecord:
    if not isinstance(document, dict) or document.get('format') != FORMAT:
        raise CalibrationRecordError(f'not a {FORMAT} document')
    agreement = document.get('agreement', {})
    if not isinstance(agreement, dict) or len(agreement) > MAX_AGREEMENT_FIELDS:
        raise CalibrationRecordError(f'agreement must be an object of at most '
                                     f'{MAX_AGREEMENT_FIELDS} fields')
    for key, value in agreement.items():
        if not (value is None or isinstance(value, (str, bool)) or is_number_in(value)):
            raise CalibrationRecordError(f'agreement.{key[:40]} must be a number, a string, '
                                         'true/false or null')
    return CalibrationRecord(
        int8_model=_text(document.get('int8_model'), 'int8_model'),
        int8_hash=_text(document.get('int8_hash'), 'int8_hash'),
        fp32_model=_text(document.get('fp32_model'), 'fp32_model'),
        fp32_hash=_text(document.get('fp32_hash'), 'fp32_hash'),
        calibration=_images(document.get('calibration'), 'calibration'),
        held_out=_images(document.get('held_out', []), 'held_out'),
        agreement=agreement)

