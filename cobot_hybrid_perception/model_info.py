"""What a YOLO model expects and produces, read from its ONNX metadata or given in config.

Ultralytics writes ``imgsz``, ``names``, ``task``, ``kpt_shape``, ``stride`` and ``end2end``
into the ONNX metadata of every export; other exporters write nothing, and then the config
(``imgsz``, ``class_names``, ``task``, ``kpt_shape``) must say it. Values from config win over
metadata, so a user can correct a model with wrong metadata.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cobot_hybrid_perception.errors import ModelLoadError

__all__ = ['COCO_KEYPOINTS', 'ModelInfo', 'TASKS']

TASKS = ('detect', 'pose')
COCO_KEYPOINTS = (
    'nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder', 'right_shoulder',
    'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist', 'left_hip', 'right_hip',
    'left_knee', 'right_knee', 'left_ankle', 'right_ankle')


@dataclass(frozen=True)
class ModelInfo:
    """Input size, classes, task and keypoint layout of a YOLO model."""

    imgsz: tuple[int, int]                      # (height, width) of the network input
    names: tuple[str, ...]                      # class index -> name
    task: str = 'detect'
    kpt_shape: tuple[int, int] | None = None    # (K, 2 or 3) for pose models
    end2end: bool = False                       # [1, N, 6(+K*d)] NMS-free output
    stride: int = 32
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.imgsz) != 2 or min(self.imgsz) <= 0:
            raise ModelLoadError(f'input size {self.imgsz} must be (height, width) > 0')
        if self.imgsz[0] % self.stride or self.imgsz[1] % self.stride:
            raise ModelLoadError(f'input size {self.imgsz} is not a multiple of the stride '
                                 f'{self.stride}; export at e.g. 320 or 640')
        if not self.names:
            raise ModelLoadError('the model has no class names: set class_names in config')
        if self.task not in TASKS:
            raise ModelLoadError(f'task {self.task!r} is not supported: use one of {TASKS}')
        if self.task == 'pose':
            if self.kpt_shape is None or self.kpt_shape[1] not in (2, 3):
                raise ModelLoadError(f'pose model needs kpt_shape (K, 2|3), got {self.kpt_shape}')
        elif self.kpt_shape is not None:
            raise ModelLoadError('kpt_shape is set but the task is detect')

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.names)

    @property
    def keypoint_values(self) -> int:
        """Values per detection spent on keypoints (K * 2 or K * 3; 0 for detect)."""
        return 0 if self.kpt_shape is None else self.kpt_shape[0] * self.kpt_shape[1]

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], input_hw: Sequence[int | None],
                      overrides: Mapping[str, Any] | None = None) -> ModelInfo:
        """Combine ONNX metadata, the model's static input shape and config overrides.

        The metadata may come from a loose file (a LiteRT sidecar): every key is checked and
        a bad one is a ModelLoadError naming the key and its value.
        """
        over = {k: v for k, v in (overrides or {}).items() if v not in (None, '', [], ())}
        meta_imgsz = _literal(metadata, 'imgsz')
        meta_names = _literal(metadata, 'names')
        meta_kpt = _literal(metadata, 'kpt_shape')
        imgsz = over.get('imgsz') or meta_imgsz or [d for d in input_hw if d]
        imgsz_from = 'imgsz' if over.get('imgsz') or meta_imgsz else 'the model input'
        if isinstance(imgsz, int) and not isinstance(imgsz, bool):
            imgsz = (imgsz, imgsz)
        if not imgsz:
            raise ModelLoadError('the model has a dynamic input size and no imgsz metadata: '
                                 'set imgsz in config')
        height, width = _ints(imgsz, imgsz_from, 2, MAX_IMGSZ)
        static = [d for d in input_hw if d]
        if len(static) == 2 and tuple(static) != (height, width):
            raise ModelLoadError(f'imgsz {[height, width]} does not match the model input '
                                 f'{static}; use the size it was exported at')
        names = _names(over['class_names'] if over.get('class_names') else meta_names,
                       'class_names' if over.get('class_names') else 'names')
        task = over.get('task') or metadata.get('task') or 'detect'
        if not isinstance(task, str):
            raise ModelLoadError(f'model task {_show(task)} is not a string')
        kpt = over.get('kpt_shape') or meta_kpt
        kpt_shape = _ints(kpt, 'kpt_shape', 2, MAX_KEYPOINTS) if kpt else None
        end2end = str(over.get('end2end', metadata.get('end2end', 'False'))).lower() == 'true'
        stride_text = metadata.get('stride', '32')
        try:
            stride = int(str(stride_text)[:20])
        except ValueError:
            stride = 0
        if not 1 <= stride <= MAX_IMGSZ:
            raise ModelLoadError(f'model metadata stride={_show(stride_text)} is not an '
                                 f'integer 1 to {MAX_IMGSZ}')
        return cls(imgsz=(height, width), names=names, task=task,
                   kpt_shape=(kpt_shape[0], kpt_shape[1]) if kpt_shape else None,
                   end2end=end2end, stride=stride, extra=dict(metadata))


MAX_IMGSZ = 16384          # pixels of a side
MAX_KEYPOINTS = 1000       # K and the values per keypoint
MAX_CLASSES = 100_000
MAX_LITERAL = 1 << 20      # characters of one metadata value parsed as a literal


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f'{text[:77]}...'


def _literal(metadata: Mapping[str, str], key: str) -> Any:
    text = metadata.get(key)
    if text is None:
        return None
    if not isinstance(text, str) or len(text) > MAX_LITERAL:
        raise ModelLoadError(f'unreadable model metadata {key}={_show(text)}: not a string of '
                             f'at most {MAX_LITERAL} characters')
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ModelLoadError(f'unreadable model metadata {key}={_show(text)}: '
                             f'{type(exc).__name__}') from None


def _ints(value: Any, key: str, count: int, most: int) -> list[int]:
    """``count`` integers 1..``most`` (a list or tuple), or ModelLoadError naming ``key``."""
    if not isinstance(value, (list, tuple)) or len(value) != count or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= most for v in value):
        raise ModelLoadError(f'model {key} {_show(value)} is not {count} integers 1 to {most}')
    return [int(v) for v in value]


def _names(value: Any, key: str) -> tuple[str, ...]:
    """Class names from a list, or a dict of indices 0..n-1; ModelLoadError otherwise."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        indices = list(value)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices) \
                or sorted(indices) != list(range(len(indices))):
            raise ModelLoadError(f'model {key} {_show(value)}: the keys must be the class '
                                 'indices 0, 1, ...')
        value = [value[i] for i in range(len(indices))]
    if not isinstance(value, (list, tuple)) or len(value) > MAX_CLASSES or not all(
            isinstance(n, (str, int)) and not isinstance(n, bool) for n in value):
        raise ModelLoadError(f'model {key} {_show(value)} is not a list of class names')
    return tuple(str(n) for n in value)
