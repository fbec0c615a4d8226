"""Compare every inference runtime available here on the same model and real photos.

Each runtime runs in its own process (so its peak memory is its own) over the sample photos
shipped in installed packages: p50/p99 latency of the whole ``Detector.detect`` (letterbox,
inference, decode), throughput, peak resident memory, and agreement with the FP32 reference
(ONNX Runtime on the CPU): recall of the reference boxes at IoU 0.5 and the mean IoU of the
matched ones. Runtimes that cannot run here are listed with the reason.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.errors import PerceptionError

__all__ = ['agreement', 'bench_one', 'box_iou', 'format_table', 'run_all']

ALL_RUNTIMES = ('tensorrt', 'ort-tensorrt', 'ort-cuda', 'ort-cpu', 'ort-cpu-int8', 'ultralytics')
REFERENCE = 'ort-cpu'


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


def _sample_images() -> list[tuple[str, npt.NDArray[Any]]]:
    from cobot_hybrid_perception.media import available_samples, load_image, sample_photo_path

    return [(name, load_image(sample_photo_path(name), 'bgr8')) for name in available_samples()]


def bench_one(model: str, runtime: str, imgsz: int, runs: int, precision: str
              ) -> dict[str, Any]:
    """Measure one runtime in this process (see :func:`run_all` for the isolated version)."""
    from cobot_hybrid_perception.detector import Detector, DetectorConfig
    from cobot_hybrid_perception.models import model_cache_dir

    backend, model_spec = runtime, model
    if runtime == 'ort-cpu-int8':
        backend = 'ort-cpu'
        try:
            int8 = _int8_path(model, imgsz)
        except PerceptionError as exc:
            return {'runtime': runtime, 'skipped': str(exc)}
        if not int8.is_file():
            return {'runtime': runtime, 'skipped': f'no INT8 model {int8.name}: run '
                    '`cobot-hybrid quantize MODEL --calib DIR` first'}
        model_spec = str(int8)
    elif runtime == 'ultralytics':
        if model not in ('default', ''):
            return {'runtime': runtime, 'skipped': 'needs the .pt of the model (--model x.pt)'}
        model_spec = str(model_cache_dir() / 'yolo11n-pose.pt')
    try:
        detector = Detector(DetectorConfig(model=model_spec, backend=backend, imgsz=imgsz,
                                           precision=precision))
    except PerceptionError as exc:
        return {'runtime': runtime, 'skipped': str(exc)}
    images = _sample_images()
    try:
        for _, image in images:  # warm-up: lazy initialisation, caches
            detector.detect(image)
        times, boxes = [], {}
        for i in range(runs):
            name, image = images[i % len(images)]
            start = time.perf_counter()
            detections, _ = detector.detect(image)
            times.append(1e3 * (time.perf_counter() - start))
            boxes[name] = detections.boxes.round(2).tolist()
    finally:
        detector.close()
    ordered = sorted(times)
    precision_run = 'int8' if runtime == 'ort-cpu-int8' else detector.backend.precision
    return {'runtime': runtime, 'backend': detector.backend.name,
            'precision': precision_run, 'model': detector.model_path.name,
            'imgsz': imgsz, 'runs': runs, 'p50_ms': statistics.median(times),
            'p99_ms': ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            'throughput_fps': 1e3 / statistics.mean(times),
            'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            'boxes': boxes}


def _int8_path(model: str, imgsz: int) -> Path:
    from cobot_hybrid_perception.models import resolve_model

    source = resolve_model(model, imgsz)
    return source.with_name(source.stem + '-int8.onnx')


def run_all(model: str, runtimes: list[str], imgsz: int, runs: int, precision: str
            ) -> list[dict[str, Any]]:
    """Every runtime in its own process; agreement with the ort-cpu FP32 reference added."""
    wanted = list(ALL_RUNTIMES) if runtimes in (['all'], []) else runtimes
    unknown = [r for r in wanted if r not in ALL_RUNTIMES]
    if unknown:
        raise PerceptionError(f'unknown runtimes {unknown}; use {", ".join(ALL_RUNTIMES)}')
    order = [REFERENCE] + [r for r in wanted if r != REFERENCE]
    results: list[dict[str, Any]] = []
    for runtime in order:
        proc = subprocess.run(
            [sys.executable, '-m', 'cobot_hybrid_perception.runtime_bench', '--one', runtime,
             '--model', model, '--imgsz', str(imgsz), '--runs', str(runs), '--precision',
             precision], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ['no output'])[-1]
            results.append({'runtime': runtime, 'skipped': f'crashed: {last}'})
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    reference = results[0].get('boxes')
    for row in results:
        boxes = row.pop('boxes', None)
        if reference is not None and boxes is not None:
            names = sorted(reference)
            recall, mean_iou = agreement([reference[n] for n in names],
                                         [boxes.get(n, []) for n in names])
            row['recall_vs_fp32'], row['mean_iou_vs_fp32'] = recall, mean_iou
    results = [r for r in results if r['runtime'] in wanted]
    return sorted(results, key=lambda r: ALL_RUNTIMES.index(r['runtime']))


def format_table(results: list[dict[str, Any]]) -> str:
    """Format :func:`run_all` results as a fixed-width table."""
    lines = [f'{"runtime":<14} {"prec":<5} {"p50 ms":>8} {"p99 ms":>8} {"fps":>7} '
             f'{"peak MB":>8} {"recall":>7} {"mIoU":>6}']
    for row in results:
        if 'skipped' in row:
            lines.append(f'{row["runtime"]:<14} skipped: {row["skipped"]}')
            continue
        lines.append(f'{row["runtime"]:<14} {row["precision"]:<5} {row["p50_ms"]:>8.2f} '
                     f'{row["p99_ms"]:>8.2f} {row["throughput_fps"]:>7.1f} '
                     f'{row["peak_rss_mb"]:>8.0f} {row.get("recall_vs_fp32", 0):>7.3f} '
                     f'{row.get("mean_iou_vs_fp32", 0):>6.3f}')
    return '\n'.join(lines)


def main() -> None:
    """Child-process entry: measure one runtime and print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--one', required=True)
    parser.add_argument('--model', default='default')
    parser.add_argument('--imgsz', type=int, default=640)
    parser.add_argument('--runs', type=int, default=50)
    parser.add_argument('--precision', default='fp16')
    args = parser.parse_args()
    print(json.dumps(bench_one(args.model, args.one, args.imgsz, args.runs, args.precision)))


if __name__ == '__main__':
    main()
