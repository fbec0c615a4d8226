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
        """Combine ONNX metadata, the model's static input shape and config overrides."""
        over = {k: v for k, v in (overrides or {}).items() if v not in (None, '', [], ())}
        try:
            meta_imgsz = _literal(metadata, 'imgsz')
            meta_names = _literal(metadata, 'names')
            meta_kpt = _literal(metadata, 'kpt_shape')
        except (ValueError, SyntaxError) as exc:
            raise ModelLoadError(f'unreadable model metadata: {exc}') from None
        imgsz = over.get('imgsz') or meta_imgsz or [d for d in input_hw if d]
        if isinstance(imgsz, int):
            imgsz = (imgsz, imgsz)
        if not imgsz or len(imgsz) != 2:
            raise ModelLoadError('the model has a dynamic input size and no imgsz metadata: '
                                 'set imgsz in config')
        static = [d for d in input_hw if d]
        if len(static) == 2 and tuple(static) != tuple(imgsz):
            raise ModelLoadError(f'imgsz {list(imgsz)} does not match the model input '
                                 f'{static}; use the size it was exported at')
        names = over.get('class_names') or meta_names
        if isinstance(names, Mapping):
            names = [str(names[i]) for i in sorted(names)]
        task = str(over.get('task') or metadata.get('task') or 'detect')
        kpt = over.get('kpt_shape') or meta_kpt
        end2end = str(over.get('end2end', metadata.get('end2end', 'False'))).lower() == 'true'
        return cls(imgsz=(int(imgsz[0]), int(imgsz[1])), names=tuple(names or ()), task=task,
                   kpt_shape=tuple(int(v) for v in kpt) if kpt else None,  # type: ignore[arg-type]
                   end2end=end2end, stride=int(metadata.get('stride', 32)),
                   extra=dict(metadata))


def _literal(metadata: Mapping[str, str], key: str) -> Any:
    text = metadata.get(key)
    return None if text is None else ast.literal_eval(text)
