"""Measure a model card: the file's facts, the model's own metadata, its latency, its agreement.

:func:`measure_card` loads the model with the detector (ONNX Runtime on the CPU, the runtime
every robot has), reads what the model says about itself (input size, task, class names:
Ultralytics metadata, see :mod:`~cobot_hybrid_perception.model_info`) and what really runs
(``int8`` for a QDQ model from ``cobot-hybrid quantize``, else ``fp32``), times
``Detector.detect`` on the evaluation images after a warm-up (p50 and nearest-rank p99), and,
given the champion's file, runs the champion on the same images and scores the candidate with
:func:`cobot_hybrid_perception.runtime_bench.agreement` (recall of the champion's boxes at
IoU 0.5, the bench's score). The result is a
:class:`~cobot_hybrid_protocol.model_card.ModelCard`, validated by the protocol package.
The images default to the real photos shipped in installed packages (``samples``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobot_hybrid_perception.detector import Detector, DetectorConfig
from cobot_hybrid_perception.errors import ConfigError
from cobot_hybrid_protocol.errors import SchemaError
from cobot_hybrid_protocol.limits import ID_MAX, is_name
from cobot_hybrid_protocol.mission import MAX_VERSION
from cobot_hybrid_protocol.model_card import (
    CardMetrics,
    DetectorSettings,
    ModelCard,
)
from cobot_hybrid_protocol.model_update import ModelRef

__all__ = ['CardRequest', 'measure_card']

WARMUP_FRAMES = 2
MAX_FRAMES = 100_000


@dataclass(frozen=True)
class CardRequest:
    """What to measure: the model, its registry name and version, the images, the champion."""

    model: Path
    name: str
    version: int
    champion: Path | None = None
    images: tuple[str, ...] = ('samples',)   # each: samples, sample:<name>, folder, file, glob
    imgsz: int = 0                          # 0: the model's own size
    runs: int = 20                          # timed frames at least (the images cycle)
    frames: int = 200                       # read at most this many frames of the images
    threads: int = 0
    conf: float = DetectorConfig.conf       # the settings the card says the model needs
    iou: float = DetectorConfig.iou
    max_det: int = DetectorConfig.max_det

    def __post_init__(self) -> None:
        if not is_name(self.name, ID_MAX):
            raise ConfigError(f'name {self.name[:40]!r}: a printable name of at most {ID_MAX} '
                              'characters, e.g. yolo11n-pose')
        if isinstance(self.version, bool) or not 1 <= self.version <= MAX_VERSION:
            raise ConfigError(f'version {self.version}: use 1 or more (the registry sets the '
                              'number it assigns)')
        if not self.images:
            raise ConfigError('images: give at least one of samples, a folder, an image, a '
                              'glob or a video')
        if not 1 <= self.runs <= MAX_FRAMES:
            raise ConfigError(f'runs {self.runs}: use 1..{MAX_FRAMES}')
        if not 1 <= self.frames <= MAX_FRAMES:
            raise ConfigError(f'frames {self.frames}: use 1..{MAX_FRAMES}')


def _onnx_file(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if path.suffix.lower() != '.onnx':
        raise ConfigError(f'{what} {path} is not an .onnx file: the registry holds ONNX models '
                          '(engines are built per GPU from them); export one with '
                          '`cobot-hybrid export MODEL.pt`')
    if not path.is_file():
        raise ConfigError(f'{what} {path} does not exist')
    return path


def _frames(specs: Sequence[str], limit: int) -> Iterator[Any]:
    """Stream the frames of every spec in turn, at most ``limit`` in all (resolved now)."""
    from cobot_hybrid_perception.runtime_bench import bench_frames, take_frames

    return take_frames([bench_frames(spec, limit) for spec in specs], limit)


def _load(path: Path, request: CardRequest, imgsz: int) -> Detector:
    return Detector(DetectorConfig(model=str(path), backend='ort-cpu', imgsz=imgsz,
                                   precision='fp32', conf=request.conf, iou=request.iou,
                                   max_det=request.max_det, threads=request.threads))


def _boxes(detector: Detector, pixels: Any) -> list[list[float]]:
    detections, _ = detector.detect(pixels)
    boxes: list[list[float]] = detections.boxes.round(2).tolist()
    return boxes


def _p99(times: Sequence[float]) -> float:
    ordered = sorted(times)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]   # nearest rank, like bench


def measure_card(request: CardRequest, now_s: float) -> ModelCard:
    """Load, time and (with a champion) compare the model; return its validated card."""
    from cobot_hybrid_perception.calibration_record import file_sha256
    from cobot_hybrid_perception.runtime_bench import agreement

    model = _onnx_file(request.model, 'model')
    champion_path = _onnx_file(request.champion, 'champion') if request.champion else None
    _frames(request.images, request.frames)      # a bad spec fails before any model loads
    detector = _load(model, request, request.imgsz)
    champion = None
    try:
        if champion_path is not None:
            champion = _load(champion_path, request, 0)   # at its own size
        height, width = detector.info.imgsz
        if height != width:
            raise ConfigError(f'{model.name} takes {height}x{width} images: a card holds one '
                              'square input size; export the model square (e.g. 320 or 640)')
        for i, frame in enumerate(_frames(request.images, request.frames)):   # warm-up
            detector.detect(frame.pixels)
            if champion is not None:
                champion.detect(frame.pixels)
            if i + 1 >= WARMUP_FRAMES:
                break
        times: list[float] = []
        ours: list[list[list[float]]] = []
        theirs: list[list[list[float]]] = []
        first_pass = True
        while first_pass or len(times) < request.runs:
            for frame in _frames(request.images, request.frames):
                start = time.perf_counter()
                detections, _ = detector.detect(frame.pixels)
                times.append(1e3 * (time.perf_counter() - start))
                if first_pass:
                    ours.append(detections.boxes.round(2).tolist())
                    if champion is not None:
                        theirs.append(_boxes(champion, frame.pixels))
            if not times:
                raise ConfigError(f'images {list(request.images)} yield no frames')
            first_pass = False
        precision = detector.backend.precision
        info = detector.info
    finally:
        detector.close()
        if champion is not None:
            champion.close()
    recall = agreement(theirs, ours)[0] if champion_path is not None else None
    try:
        ref = ModelRef(name=request.name, version=request.version, sha256=file_sha256(model),
                       size_bytes=model.stat().st_size, imgsz=height, task=info.task,
                       precision=precision, format='onnx')
        return ModelCard(
            model=ref, classes=tuple(info.names),
            settings=DetectorSettings(request.conf, request.iou, request.max_det),
            metrics=CardMetrics(images=len(ours),
                                latency_p50_ms=round(statistics.median(times), 3),
                                latency_p99_ms=round(_p99(times), 3), agreement=recall,
                                champion_sha256=file_sha256(champion_path)
                                if champion_path is not None else None),
            created_at=now_s)
    except SchemaError as exc:
        raise ConfigError(f'the card of {model.name} cannot be made: {exc}') from None
