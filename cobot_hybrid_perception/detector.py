"""The detector core: letterbox -> backend -> decode, with per-stage times. No ROS.

:class:`Detector` is built from a validated :class:`DetectorConfig`; it resolves the model
(the default one from the cache, or a path), picks the backend, reads the model's metadata
(config values win) and preallocates the input tensor. :meth:`Detector.detect` takes an 8-bit
image and returns :class:`~cobot_hybrid_perception.yolo_decode.Detections` in the image's own
pixels plus how long each stage took.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from cobot_hybrid_perception.backends import BACKENDS, BackendOptions, select_backend
from cobot_hybrid_perception.errors import ConfigError
from cobot_hybrid_perception.letterbox import Letterbox
from cobot_hybrid_perception.model_info import TASKS, ModelInfo
from cobot_hybrid_perception.models import model_cache_dir, resolve_model
from cobot_hybrid_perception.yolo_decode import Detections, decode
from cobot_hybrid_protocol.settings import check_settings, setting

__all__ = ['DEFAULT_IMGSZ', 'DetectorConfig', 'Detector', 'StageTimes', 'PRECISIONS']

PRECISIONS = ('fp32', 'fp16', 'int8')
#: The default model's size when imgsz is 0 (the node's and the CLI's default).
DEFAULT_IMGSZ = 640


@dataclass(frozen=True)
class DetectorConfig:
    """What to run and how (also the detector node's parameters)."""

    model: str = setting('default', 'default (YOLO11n-pose from the model cache) or a '
                         '.onnx/.engine/.tflite/.pt path')
    backend: str = setting('auto', 'inference runtime (auto: the fastest measured here that '
                           'runs the model file)', choices=BACKENDS)
    imgsz: int = setting(0, "network input size: 0 = the model's own (640 for the default "
                         'model); else it must match the model (default model: 320 or 640)',
                         low=0, high=4096)
    precision: str = setting('fp16', 'fp16/int8 on GPU backends; CPU backends run fp32, or '
                             'int8 from an INT8 (QDQ) model', choices=PRECISIONS)
    conf: float = setting(0.25, 'minimum score', low=0.0, high=1.0, live=True)
    iou: float = setting(0.45, 'NMS IoU threshold', low=0.0, high=1.0, live=True)
    max_det: int = setting(100, 'most detections per frame', low=1, high=10000, live=True)
    device: int = setting(0, 'CUDA device index', low=0, high=64)
    openvino_device: str = setting('CPU', 'OpenVINO device (backend openvino): CPU, GPU, '
                                   'GPU.<n> or NPU')
    threads: int = setting(0, 'CPU inference threads (0: runtime default)', low=0, high=256)
    cache_dir: str = setting('', 'engines and calibration caches (empty: the model cache)')
    calib_dir: str = setting('', 'folder of images for INT8 calibration')
    class_names: tuple[str, ...] = setting((), 'class names when the model has no metadata',
                                           array_type='string')
    task: str = setting('', 'detect | pose when the model has no metadata')
    kpt_shape: tuple[int, ...] = setting((), '[K, 2|3] when the model has no metadata',
                                         array_type='integer')

    def __post_init__(self) -> None:
        check_settings(self, ConfigError)
        object.__setattr__(self, 'class_names', tuple(str(v) for v in self.class_names))
        object.__setattr__(self, 'kpt_shape', tuple(int(v) for v in self.kpt_shape))
        if self.backend not in BACKENDS:
            raise ConfigError(f'backend {self.backend!r}: use one of {", ".join(BACKENDS)}')
        if self.precision not in PRECISIONS:
            raise ConfigError(f'precision {self.precision!r}: use one of {PRECISIONS}')
        if self.imgsz < 0 or self.imgsz % 32:
            raise ConfigError(f"imgsz {self.imgsz} must be 0 (the model's own size) or a "
                              'positive multiple of 32')
        if not re.fullmatch(r'CPU|GPU(\.\d{1,2})?|NPU', self.openvino_device):
            raise ConfigError(f'openvino_device {self.openvino_device!r}: use CPU, GPU, '
                              'GPU.<n> or NPU')
        for name in ('conf', 'iou'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f'{name} {getattr(self, name)} outside 0..1')
        if self.max_det <= 0:
            raise ConfigError(f'max_det {self.max_det} must be > 0')
        if self.task and self.task not in TASKS:
            raise ConfigError(f'task {self.task!r}: use one of {TASKS} (or empty for metadata)')
        if self.kpt_shape and (len(self.kpt_shape) != 2 or self.kpt_shape[1] not in (2, 3)):
            raise ConfigError(f'kpt_shape {list(self.kpt_shape)}: use [K, 2] or [K, 3]')
        if self.precision == 'int8' and self.backend == 'tensorrt' and not self.calib_dir:
            raise ConfigError('precision int8 with backend tensorrt needs calib_dir (a folder '
                              'of images like the ones the robot sees)')


@dataclass(frozen=True)
class StageTimes:
    """Milliseconds spent per stage of one frame."""

    preprocess_ms: float
    infer_ms: float
    postprocess_ms: float

    @property
    def total_ms(self) -> float:
        """Sum of the stages."""
        return self.preprocess_ms + self.infer_ms + self.postprocess_ms


class Detector:
    """A model loaded into a backend, ready for frames."""

    def __init__(self, cfg: DetectorConfig) -> None:
        self.cfg = cfg
        size = cfg.imgsz or DEFAULT_IMGSZ
        self.model_path = resolve_model(cfg.model, size,
                                        '.tflite' if cfg.backend == 'litert' else '.onnx')
        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else model_cache_dir()
        options = BackendOptions(precision=cfg.precision, device=cfg.device,
                                 openvino_device=cfg.openvino_device,
                                 threads=cfg.threads, cache_dir=cache,
                                 calib_dir=Path(cfg.calib_dir) if cfg.calib_dir else None,
                                 imgsz=(size, size))
        choice = select_backend(cfg.backend, self.model_path, options)
        self.backend = choice.backend
        self.backend_reason = choice.reason
        try:
            _, _, height, width = self.backend.input_shape
            if cfg.imgsz and (height, width) != (cfg.imgsz, cfg.imgsz):
                raise ConfigError(
                    f'imgsz {cfg.imgsz} does not match the input of {self.model_path.name} '
                    f"({height}x{width}); set imgsz {height} or 0 (the model's own size), or "
                    f'export the model at {cfg.imgsz}')
            overrides = {'class_names': cfg.class_names, 'task': cfg.task,
                         'kpt_shape': cfg.kpt_shape}
            self.info = ModelInfo.from_metadata(self.backend.metadata, (height, width),
                                                overrides)
        except Exception:
            self.backend.close()
            raise
        self.letterbox = Letterbox(*self.info.imgsz)

    @property
    def model_hash(self) -> str:
        """Short SHA-256 of the model file."""
        return str(getattr(self.backend, 'model_hash', ''))

    def detect(self, image: npt.NDArray[Any], encoding: str = 'bgr8',
               conf: float | None = None) -> tuple[Detections, StageTimes]:
        """Detect in one 8-bit image (bgr8, rgb8 or mono8), down to ``conf`` if given.

        ``conf`` replaces the config's minimum score for this frame: the detector node decodes
        down to the tracker's low threshold (:func:`~cobot_hybrid_perception.tracking.decode_conf`)
        and publishes only what scores ``cfg.conf`` or more.
        """
        t0 = time.perf_counter()
        transform = self.letterbox(image, encoding)
        t1 = time.perf_counter()
        outputs = self.backend.infer(self.letterbox.tensor)
        t2 = time.perf_counter()
        detections = decode(outputs, self.info, transform,
                            self.cfg.conf if conf is None else conf, self.cfg.iou,
                            self.cfg.max_det)
        t3 = time.perf_counter()
        return detections, StageTimes(1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2))

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()
