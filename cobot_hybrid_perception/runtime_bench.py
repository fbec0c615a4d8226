"""Compare every inference runtime and precision available here on one model and your frames.

Rows are (backend, precision) pairs: every backend of
:data:`cobot_hybrid_perception.backends.BACKENDS` but ``auto``, GPU backends at fp32, fp16
and int8, CPU backends at fp32 and with the INT8 model ``quantize`` wrote beside the FP32 one,
LiteRT with the ``.tflite`` of the model cache. Each row runs in its own process, so its peak
resident memory (``ru_maxrss`` of that process) is its own, over the same frames: the photos
shipped in installed packages, or any folder, image, glob or video (at most ``frames`` of
them, streamed, so a long video does not fill memory).

Per row: p50/p99 latency of the whole ``Detector.detect`` (letterbox, inference, decode),
throughput, peak memory, and agreement with the reference (ONNX Runtime on the CPU, FP32):
recall of the reference boxes at IoU 0.5 and the mean IoU of the matched ones. An INT8 row
is scored on held-out frames only: the frames the model was calibrated on (its
``<model>.calib.json``, see :mod:`~cobot_hybrid_perception.calibration_record`) are left out,
and the row says how many. Combinations that cannot run here are rows with the reason.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.errors import (
    BackendUnavailableError,
    ConfigError,
    PerceptionError,
)

__all__ = ['BenchSettings', 'RowPlan', 'agreement', 'bench_frames', 'bench_one', 'box_iou',
           'machine_info', 'plan_rows', 'run_bench']

PRECISIONS = ('fp32', 'fp16', 'int8')
REFERENCE = ('ort-cpu', 'fp32')
GPU_BACKENDS = frozenset({'tensorrt', 'ort-tensorrt', 'ort-cuda'})
#: Backends this command knows how to place in the table before this build has them.
OPTIONAL_BACKENDS = ('openvino', 'litert')
#: What each backend is for (the seed table's "hardware target").
TARGETS = {
    'tensorrt': 'NVIDIA GPU / Jetson (TensorRT engine)',
    'ort-tensorrt': 'NVIDIA GPU / Jetson (ONNX Runtime TensorRT EP)',
    'ort-cuda': 'NVIDIA GPU (ONNX Runtime CUDA EP)',
    'ort-cpu': 'any CPU (ONNX Runtime)',
    'openvino': 'Intel CPU, iGPU, NPU (OpenVINO; here on this CPU)',
    'litert': 'ARM CPU, Edge TPU (LiteRT; here on this CPU)',
    'ultralytics': 'development: PyTorch on CPU or CUDA',
}
MAX_FRAMES = 100_000
MAX_CHILD_OUTPUT = 64 * 2**20
_VERSIONED = ('onnxruntime', 'onnxruntime-gpu', 'openvino', 'ai-edge-litert', 'tensorrt',
              'torch', 'ultralytics', 'numpy', 'opencv-python', 'opencv-python-headless')


def box_iou(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """IoU matrix of xyxy boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0],
                                                                      b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1],
                                                                      b[None, :, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    result: npt.NDArray[np.float64] = inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)
    return result


def agreement(reference: list[list[list[float]]], candidate: list[list[list[float]]],
              threshold: float = 0.5) -> tuple[float, float]:
    """Return (recall of reference boxes at IoU >= threshold, mean IoU of the matches).

    Matching is greedy and one-to-one per image; (1.0, 1.0) when neither has any box.
    """
    matched, total, ious = 0, 0, []
    for ref, cand in zip(reference, candidate, strict=True):
        total += len(ref)
        if not ref or not cand:
            continue
        iou = box_iou(np.array(ref), np.array(cand))
        free = np.ones(iou.shape[1], dtype=bool)
        for i in np.argsort(-iou.max(axis=1)):
            row = np.where(free, iou[i], -1.0)
            j = int(np.argmax(row))
            if row[j] >= threshold:
                free[j] = False
                matched += 1
                ious.append(float(row[j]))
    if total == 0:
        return (1.0, 1.0) if all(not c for c in candidate) else (1.0, 0.0)
    return matched / total, (float(np.mean(ious)) if ious else 0.0)


# --- frames -----------------------------------------------------------------------------------

def _expand(spec: str) -> list[str]:
    """Return the spec as iter_frames takes it, or the image and video files a glob names."""
    from cobot_hybrid_perception.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, MediaSourceError

    if not spec:
        raise MediaSourceError('--images is empty; give "samples", a folder, an image, a glob '
                               'or a video')
    if any(c in spec for c in '*?[') and not Path(spec).expanduser().exists():
        suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES
        matches = sorted(p for p in glob.glob(os.path.expanduser(spec), recursive=True)
                         if Path(p).suffix.lower() in suffixes and Path(p).is_file())
        if not matches:
            raise MediaSourceError(f'images {spec!r} match no image or video file '
                                   f'({", ".join(sorted(suffixes))})')
        return matches
    return [spec]


def bench_frames(spec: str, limit: int) -> Iterator[Any]:
    """Stream the first ``limit`` frames (bgr8) of ``spec``; a new pass at every call.

    ``spec`` is what :func:`cobot_hybrid_perception.media.iter_frames` takes (``samples``,
    ``sample:<name>``, a folder, an image, a video) or a glob of such files. The source is
    resolved now: a spec that names nothing raises MediaSourceError here.
    """
    from cobot_hybrid_perception.media import iter_frames

    if not 1 <= limit <= MAX_FRAMES:
        raise ConfigError(f'frames {limit}: use 1..{MAX_FRAMES}')
    return take_frames([iter_frames(one, 'bgr8') for one in _expand(spec)], limit)


def take_frames(sources: list[Iterator[Any]], limit: int) -> Iterator[Any]:
    """Stream the frames of each source in turn, at most ``limit`` in all."""
    def generate() -> Iterator[Any]:
        produced = 0
        for source in sources:
            for frame in source:
                yield frame
                produced += 1
                if produced >= limit:
                    return

    return generate()


@dataclass(frozen=True)
class FrameSet:
    """What the frames of a run are: how many, their labels and pixel hashes."""

    spec: str
    labels: tuple[str, ...]
    pixels_sha256: tuple[str, ...]


def describe_frames(spec: str, limit: int) -> FrameSet:
    """One pass over the frames: labels and hashes (MediaSourceError when there are none)."""
    from cobot_hybrid_perception.calibration_record import pixels_sha256
    from cobot_hybrid_perception.media import MediaSourceError

    labels, hashes = [], []
    for frame in bench_frames(spec, limit):
        labels.append(frame.label)
        hashes.append(pixels_sha256(frame.pixels))
    if not labels:
        raise MediaSourceError(f'images {spec!r} yield no frames')
    return FrameSet(spec, tuple(labels), tuple(hashes))


# --- which rows -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RowPlan:
    """One (backend, precision) row: the model file it runs, or why it cannot."""

    backend: str
    precision: str
    model: str = ''
    skipped: str = ''
    calib_dir: str = ''


def _precisions(backend: str) -> tuple[str, ...]:
    if backend in GPU_BACKENDS:
        return PRECISIONS
    if backend in ('litert', 'ultralytics'):
        return ('fp32',)
    return ('fp32', 'int8')


def int8_model_path(source: Path) -> Path:
    """Where ``cobot-hybrid quantize`` puts the INT8 model of ``source``."""
    return source.with_name(source.stem + '-int8.onnx')


def _plan_one(backend: str, precision: str, source: Path, calib: str, default: bool
              ) -> RowPlan:
    from cobot_hybrid_perception.models import DEFAULT_MODEL, model_cache_dir

    if backend == 'ultralytics':
        pt = model_cache_dir() / f'{DEFAULT_MODEL}.pt' if default else source.with_suffix('.pt')
        if not pt.is_file():
            return RowPlan(backend, precision, skipped=f'needs the .pt of the model ({pt.name} '
                           f'beside {source.name})')
        return RowPlan(backend, precision, str(pt))
    if backend == 'litert':
        tflite = source.with_suffix('.tflite')
        if not tflite.is_file():
            where = 'the model cache' if default else str(source.parent)
            return RowPlan(backend, precision, skipped=f'no {tflite.name} in {where}: convert '
                           'it with `make litert-model` (a separate export environment)')
        return RowPlan(backend, precision, str(tflite))
    if backend == 'ort-cuda' and precision == 'fp16':
        return RowPlan(backend, precision, skipped='the CUDA EP runs the model in its own '
                       'precision (fp32); fp16 is the tensorrt and ort-tensorrt rows')
    if precision != 'int8':
        return RowPlan(backend, precision, str(source))
    if backend in ('ort-cuda', 'ort-tensorrt'):
        return RowPlan(backend, precision, skipped='ONNX Runtime has no INT8 path on this EP '
                       '(the CUDA EP has no INT8 kernels, the TensorRT EP would need its own '
                       'calibration): INT8 on the GPU is the tensorrt row')
    if backend == 'tensorrt':
        if not calib:
            return RowPlan(backend, precision, skipped='TensorRT INT8 calibrates on your '
                           'images: give --calib DIR')
        return RowPlan(backend, precision, str(source), calib_dir=calib)
    int8 = int8_model_path(source)
    if not int8.is_file():
        return RowPlan(backend, precision, skipped=f'no INT8 model {int8.name}: run '
                       f'`cobot-hybrid quantize {source.name} --calib DIR` first')
    return RowPlan(backend, precision, str(int8))


def plan_rows(source: Path, wanted: Sequence[str] = ('all',),
              precisions: Sequence[str] = PRECISIONS, calib: str = '',
              backends: Sequence[str] | None = None, default: bool = False
              ) -> list[RowPlan]:
    """List the rows to measure for the FP32 model ``source``, in table order.

    ``wanted`` names backends (``all``: every one); ``backends`` defaults to
    :data:`~cobot_hybrid_perception.backends.BACKENDS`; ``default`` says ``source`` is the
    default model of the cache (its ``.pt`` and ``.tflite`` live there). A backend this build
    lacks but this command knows (openvino, litert) is a skipped row saying so.
    """
    if backends is None:
        from cobot_hybrid_perception.backends import BACKENDS
        backends = BACKENDS
    present = [b for b in backends if b != 'auto']
    known = present + [b for b in OPTIONAL_BACKENDS if b not in present]
    chosen = known if list(wanted) in (['all'], []) else list(dict.fromkeys(wanted))
    unknown = [b for b in chosen if b not in known]
    if unknown:
        raise ConfigError(f'unknown backends {unknown}; use all or some of {", ".join(known)}')
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ConfigError(f'precisions {list(precisions)}: use some of {", ".join(PRECISIONS)}')
    rows = []
    for backend in sorted(chosen, key=known.index):
        for precision in _precisions(backend):
            if precision not in precisions:
                continue
            if backend not in present:
                rows.append(RowPlan(backend, precision, skipped=f'backend {backend} is not in '
                                    f'this build (backends: {", ".join(present)})'))
                continue
            rows.append(_plan_one(backend, precision, source, calib, default))
    return rows


# --- one row, in its own process ---------------------------------------------------------------

def bench_one(plan: RowPlan, imgsz: int, runs: int, images: str, frames: int,
              threads: int = 0) -> dict[str, Any]:
    """Measure one row in this process (:func:`run_bench` runs each in a child process)."""
    from cobot_hybrid_perception.detector import Detector, DetectorConfig

    row: dict[str, Any] = {'backend': plan.backend, 'precision': plan.precision}
    start = time.perf_counter()
    try:
        detector = Detector(DetectorConfig(model=plan.model, backend=plan.backend, imgsz=imgsz,
                                           precision=plan.precision, threads=threads,
                                           calib_dir=plan.calib_dir))
    except BackendUnavailableError as exc:
        return {**row, 'skipped': str(exc), 'backend_unavailable': True}
    except PerceptionError as exc:
        return {**row, 'skipped': str(exc)}
    load_s = time.perf_counter() - start
    times: list[float] = []
    boxes: list[list[list[float]]] = []
    try:
        for i, frame in enumerate(bench_frames(images, frames)):  # warm-up: lazy init, caches
            detector.detect(frame.pixels)
            if i >= 4:
                break
        first_pass = True
        while first_pass or len(times) < runs:
            timed = len(times)
            for frame in bench_frames(images, frames):
                t0 = time.perf_counter()
                detections, _ = detector.detect(frame.pixels)
                times.append(1e3 * (time.perf_counter() - t0))
                if first_pass:
                    boxes.append(detections.boxes.round(2).tolist())
            if len(times) == timed:
                return {**row, 'skipped': f'images {images!r} yield no frames'}
            first_pass = False
    except PerceptionError as exc:
        return {**row, 'skipped': f'failed on a frame: {exc}'}
    finally:
        detector.close()
    ordered = sorted(times)
    return {**row, 'backend_name': detector.backend.name,
            'backend_precision': detector.backend.precision,
            'model': detector.model_path.name, 'model_hash': detector.model_hash,
            'imgsz': detector.info.imgsz[0], 'runs': len(times), 'load_s': load_s,
            'p50_ms': statistics.median(times),
            'p99_ms': ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)],  # nearest rank
            'mean_ms': statistics.mean(times),
            'throughput_fps': 1e3 / statistics.mean(times),
            'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            'boxes': boxes}


# --- the whole comparison ----------------------------------------------------------------------

@dataclass(frozen=True)
class BenchSettings:
    """What ``cobot-hybrid bench`` measures."""

    model: str = 'default'
    backends: tuple[str, ...] = ('all',)
    precisions: tuple[str, ...] = PRECISIONS
    imgsz: int = 0                 # 0: the model's own size (640 for the default model)
    runs: int = 50
    images: str = 'samples'
    frames: int = 200
    calib: str = ''
    threads: int = 0
    timeout_s: float = 1200.0

    def __post_init__(self) -> None:
        if not 1 <= self.runs <= 1_000_000:
            raise ConfigError(f'runs {self.runs}: use 1..1000000')
        if not 1 <= self.frames <= MAX_FRAMES:
            raise ConfigError(f'frames {self.frames}: use 1..{MAX_FRAMES}')
        if self.imgsz < 0 or self.imgsz % 32:
            raise ConfigError(f"imgsz {self.imgsz} must be a positive multiple of 32, or 0 "
                              "(the model's own size)")
        if not 0 <= self.threads <= 256:
            raise ConfigError(f'threads {self.threads}: use 0..256 (0: runtime default)')
        if not self.timeout_s > 0:
            raise ConfigError(f'timeout {self.timeout_s} s must be > 0')


def _run_child(plan: RowPlan, settings: BenchSettings, frames: int) -> dict[str, Any]:
    command = [sys.executable, '-m', 'cobot_hybrid_perception.runtime_bench',
               '--plan', json.dumps(asdict(plan)), '--imgsz', str(settings.imgsz),
               '--runs', str(settings.runs), '--images', settings.images,
               '--frames', str(frames), '--threads', str(settings.threads)]
    row = {'backend': plan.backend, 'precision': plan.precision}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=settings.timeout_s)
    except subprocess.TimeoutExpired:
        return {**row, 'skipped': f'timed out after {settings.timeout_s:.0f} s'}
    lines = proc.stdout[-MAX_CHILD_OUTPUT:].strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ['no output'])[-1][:500]
        return {**row, 'skipped': f'crashed (exit {proc.returncode}): {last}'}
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {**row, 'skipped': f'unreadable result: {lines[-1][:200]!r}'}
    if not isinstance(result, dict):
        return {**row, 'skipped': f'unreadable result: {lines[-1][:200]!r}'}
    return result


def _excluded(plan: RowPlan, frame_set: FrameSet) -> tuple[frozenset[int], str]:
    """Frames an INT8 row must not be scored on, and what was known about its calibration."""
    from cobot_hybrid_perception.backends.base import model_hash
    from cobot_hybrid_perception.calibration_record import (
        CalibrationRecordError,
        read_record,
        record_path,
    )

    if plan.precision != 'int8':
        return frozenset(), ''
    if plan.calib_dir:
        calib = describe_calib_dir(Path(plan.calib_dir))
        note = f'calibrated on {len(calib)} images of {plan.calib_dir}'
    else:
        model = Path(plan.model)
        try:
            record = read_record(model)
        except CalibrationRecordError as exc:
            return frozenset(), f'{exc}; scored on every frame'
        if record is None:
            return frozenset(), (f'no calibration record {record_path(model).name}: cannot '
                                 'tell its calibration images apart; scored on every frame')
        if record.int8_hash != model_hash(model):
            return frozenset(), (f'{record_path(model).name} describes another file (hash '
                                 'differs); scored on every frame')
        calib = record.calibration_pixels
        note = f'calibrated on {len(calib)} images ({record_path(model).name})'
    excluded = frozenset(i for i, h in enumerate(frame_set.pixels_sha256) if h in calib)
    return excluded, note


def describe_calib_dir(folder: Path, limit: int = 1000) -> frozenset[str]:
    """Pixel hashes of the images of a calibration folder (what TensorRT INT8 reads)."""
    from cobot_hybrid_perception.calibration_record import pixels_sha256
    from cobot_hybrid_perception.media import IMAGE_SUFFIXES, MediaSourceError, load_image

    if not folder.is_dir():
        raise MediaSourceError(f'calibration folder {folder} does not exist')
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    return frozenset(pixels_sha256(load_image(p, 'bgr8')) for p in paths)


def _score(row: dict[str, Any], reference: list[list[list[float]]] | None,
           excluded: frozenset[int], note: str) -> None:
    boxes = row.pop('boxes', None)
    if boxes is None:
        return
    if reference is None:
        row['agreement_note'] = 'no reference: ort-cpu fp32 could not run'
        return
    keep = [i for i in range(min(len(reference), len(boxes))) if i not in excluded]
    row['agreement_frames'] = len(keep)
    row['excluded_calibration_frames'] = len(excluded)
    if note:
        row['agreement_note'] = note
    if not keep:
        row['recall_vs_fp32'] = row['mean_iou_vs_fp32'] = None
        row['agreement_note'] = (note + '; ' if note else '') + \
            'every frame is a calibration image: bench on other images'
        return
    recall, mean_iou = agreement([reference[i] for i in keep], [boxes[i] for i in keep])
    row['recall_vs_fp32'], row['mean_iou_vs_fp32'] = recall, mean_iou


def run_bench(settings: BenchSettings) -> dict[str, Any]:
    """Every planned row in its own process, scored against the ort-cpu FP32 reference."""
    from cobot_hybrid_perception.detector import DEFAULT_IMGSZ
    from cobot_hybrid_perception.models import DEFAULT_MODEL, resolve_model

    load_before = _load_1min()
    if not settings.imgsz and settings.model in ('', 'default', DEFAULT_MODEL):
        settings = replace(settings, imgsz=DEFAULT_IMGSZ)   # the default model's default size
    source = resolve_model(settings.model, settings.imgsz or DEFAULT_IMGSZ)
    plans = plan_rows(source, settings.backends, settings.precisions, settings.calib,
                      default=settings.model in ('', 'default', DEFAULT_MODEL))
    frame_set = describe_frames(settings.images, settings.frames)
    frames = len(frame_set.labels)
    reference_plan = RowPlan(*REFERENCE, model=str(source))
    in_table = any((p.backend, p.precision) == REFERENCE for p in plans)
    results: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    reference_row = _run_child(reference_plan, settings, frames)
    reference = reference_row.get('boxes')
    if reference_row.get('backend_unavailable'):
        unavailable[REFERENCE[0]] = reference_row['skipped']
    for plan in plans:
        if (plan.backend, plan.precision) == REFERENCE:
            row = dict(reference_row)
        elif plan.backend in unavailable:  # the runtime itself, whatever the model
            row = {'backend': plan.backend, 'precision': plan.precision,
                   'skipped': unavailable[plan.backend]}
        elif plan.skipped:
            row = {'backend': plan.backend, 'precision': plan.precision,
                   'skipped': plan.skipped}
        else:
            row = _run_child(plan, settings, frames)
            if row.pop('backend_unavailable', False):
                unavailable[plan.backend] = row['skipped']
        row.pop('backend_unavailable', None)
        row['target'] = TARGETS.get(plan.backend, '')
        excluded, note = _excluded(plan, frame_set) if 'skipped' not in row \
            else (frozenset(), '')
        _score(row, reference, excluded, note)
        results.append(row)
    measured = asdict(settings)
    if not settings.imgsz:   # a model file at its own size: the one the reference ran at
        measured['imgsz'] = reference_row.get('imgsz', 0)
    return {'machine': machine_info(), 'settings': measured,
            'model': source.name, 'reference': ' '.join(REFERENCE),
            'reference_in_table': in_table,
            'load_1min': {'before': load_before, 'after': _load_1min()},
            'frames': {'spec': settings.images, 'count': frames,
                       'labels': list(frame_set.labels[:50])},
            'rows': results}


# --- the machine ------------------------------------------------------------------------------

def _load_1min() -> float | None:
    """Return the 1-minute load average (other work on the CPU makes latencies noisy)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as handle:
            text = handle.read(1 << 20)
    except OSError:
        text = ''
    for line in text.splitlines():
        if line.startswith('model name') and ':' in line:
            return line.split(':', 1)[1].strip()[:200]
    return (platform.processor() or platform.machine())[:200]


def _gpus() -> list[str]:
    smi = shutil.which('nvidia-smi')
    if smi is None:
        return []
    try:
        proc = subprocess.run([smi, '--query-gpu=name,driver_version,memory.total',
                               '--format=csv,noheader'], capture_output=True, text=True,
                              timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0:
        return []
    return [line.strip()[:200] for line in proc.stdout[:10_000].splitlines() if line.strip()]


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPUs and runtime versions of this machine."""
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    memory_gb = 0.0
    try:
        memory_gb = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    return {'cpu': _cpu_model(), 'cores': os.cpu_count() or 0, 'usable_cores': usable,
            'memory_gb': round(memory_gb, 1), 'gpus': _gpus(),
            'os': f'{platform.system()} {platform.release()}', 'arch': platform.machine(),
            'python': platform.python_version(), 'versions': versions}


def main() -> None:
    """Child-process entry: measure one row and print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--plan', required=True, help='a RowPlan as JSON')
    parser.add_argument('--imgsz', type=int, default=0)
    parser.add_argument('--runs', type=int, default=50)
    parser.add_argument('--images', default='samples')
    parser.add_argument('--frames', type=int, default=200)
    parser.add_argument('--threads', type=int, default=0)
    args = parser.parse_args()
    plan = RowPlan(**json.loads(args.plan))
    print(json.dumps(bench_one(plan, args.imgsz, args.runs, args.images, args.frames,
                               args.threads)))


if __name__ == '__main__':
    main()
