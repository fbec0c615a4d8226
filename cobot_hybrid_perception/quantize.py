"""Static INT8 (QDQ) quantization of an ONNX detector, calibrated on the user's images.

The calibration images are letterboxed exactly as at inference. The detection head's last
module (box decoding, concatenation: the part whose outputs are pixel coordinates) stays in
FP32, the usual recipe for YOLO models, because quantizing coordinates in the hundreds to
8 bits costs pixels.

The INT8 model is scored against the FP32 one on held-out images only, never on the images it
was calibrated on: by default every 5th image of the calibration folder is held out (and not
used for calibration); ``holdout`` names other images instead (any frames
``cobot-hybrid bench --images`` takes; calibration images among them are left out and
counted). Which images calibrated the model is written beside it, in ``<output>.calib.json``
(:mod:`~cobot_hybrid_perception.calibration_record`), so ``cobot-hybrid bench`` leaves them
out too.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.errors import ConfigError, ModelLoadError

__all__ = ['HOLDOUT_EVERY', 'head_nodes', 'quantize_int8', 'split_holdout']

#: Without ``holdout``, every HOLDOUT_EVERY-th image of the calibration folder is held out.
HOLDOUT_EVERY = 5
MAX_LISTED = 100_000


def head_nodes(node_names: list[str]) -> list[str]:
    """Names of the nodes of the last ``/model.N/`` module (the detection head)."""
    indices = [int(m.group(1)) for name in node_names
               if (m := re.match(r'^/model\.(\d+)/', name))]
    if not indices:
        return []
    last = f'/model.{max(indices)}/'
    return [name for name in node_names if name.startswith(last)]


def split_holdout(paths: list[Path], every: int = HOLDOUT_EVERY
                  ) -> tuple[list[Path], list[Path]]:
    """(calibration, held out): every ``every``-th path held out, at least one of two or more."""
    if len(paths) < 2:
        raise ConfigError(f'{len(paths)} image(s) cannot be split into calibration and '
                          'held-out images: give more, --holdout SPEC (other images to score '
                          'on) or --holdout none (no score)')
    held = paths[every - 1::every] or paths[-1:]
    chosen = set(held)
    return [p for p in paths if p not in chosen], held


def _calibration_files(calib_dir: Path) -> list[Path]:
    from cobot_hybrid_perception.media import IMAGE_SUFFIXES

    if not calib_dir.is_dir():
        raise ModelLoadError(f'calibration folder {calib_dir} does not exist; give a folder of '
                             'images like the ones the robot sees (a few hundred is typical)')
    paths = sorted(p for p in calib_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ModelLoadError(f'calibration folder {calib_dir} holds no images '
                             f'({", ".join(sorted(IMAGE_SUFFIXES))})')
    if len(paths) > MAX_LISTED:
        raise ConfigError(f'calibration folder {calib_dir} holds over {MAX_LISTED} images; '
                          'give a folder of a few hundred')
    return paths


def quantize_int8(model: Path, calib_dir: Path, output: Path | None = None,
                  images: int = 64, holdout: str = '', holdout_frames: int = 200
                  ) -> dict[str, Any]:
    """Write ``<model>-int8.onnx`` (or ``output``) and its calibration record.

    Returns the agreement with FP32 on the held-out frames: ``holdout`` empty splits the
    calibration folder (every 5th image held out), ``none`` scores nothing, anything else is
    a frame spec (folder, image, glob, video; at most ``holdout_frames`` frames).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from cobot_hybrid_perception.backends.base import model_hash
    from cobot_hybrid_perception.calibration_record import (
        CalibrationRecord,
        ImageHash,
        file_sha256,
        pixels_sha256,
        write_record,
    )
    from cobot_hybrid_perception.letterbox import Letterbox
    from cobot_hybrid_perception.media import load_image

    if not model.is_file() or model.suffix != '.onnx':
        raise ModelLoadError(f'quantize needs an FP32 .onnx model; {model} is not one')
    if images < 1:
        raise ConfigError(f'images {images}: calibrate on at least one image')
    output = output or model.with_name(model.stem + '-int8.onnx')
    if output.resolve() == model.resolve():
        raise ConfigError(f'output {output} would overwrite the FP32 model')
    paths = _calibration_files(calib_dir)
    held_paths: list[Path] = []
    if holdout:
        calib_paths = paths[:images]
    else:
        calib_paths, held_paths = split_holdout(paths)
        calib_paths = calib_paths[:images]
    proto = onnx.load(str(model))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    input_hw = (dims[2].dim_value, dims[3].dim_value)
    input_name = proto.graph.input[0].name
    if min(input_hw) <= 0:
        raise ModelLoadError(f'{model} has a dynamic input size; export it at a fixed size')
    letterbox = Letterbox(*input_hw)
    batches: list[npt.NDArray[np.float32]] = []
    calibration: list[ImageHash] = []
    for path in calib_paths:
        pixels = load_image(path, 'bgr8')
        calibration.append(ImageHash(path.name, pixels_sha256(pixels), file_sha256(path)))
        letterbox(pixels, 'bgr8')
        batches.append(letterbox.tensor.copy())

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._items = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self._items, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / 'prepared.onnx'
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
        names = [node.name for node in onnx.load(str(prepared)).graph.node]
        quantize_static(str(prepared), str(output), _Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=head_nodes(names))
    # Keep the Ultralytics metadata (names, task, keypoints) on the quantized model.
    quantized = onnx.load(str(output))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(proto.metadata_props)
    onnx.save(quantized, str(output))
    del batches[:]
    record = CalibrationRecord(output.name, model_hash(output), model.name, model_hash(model),
                               tuple(calibration))
    record_file = write_record(output, record)

    report: dict[str, Any] = {
        'output': str(output), 'calibration_record': str(record_file),
        'calibration_images': len(calibration),
        'holdout': holdout or f'every {HOLDOUT_EVERY}th image of {calib_dir}',
        'fp32_size_mb': model.stat().st_size / 2**20,
        'int8_size_mb': output.stat().st_size / 2**20,
        'head_nodes_kept_fp32': len(head_nodes(names))}
    if holdout == 'none':
        return {**report, 'holdout_images': 0, 'holdout_excluded': 0, 'recall': None,
                'mean_iou': None}
    scored = _score_holdout(model, output, held_paths, holdout, holdout_frames,
                            record.calibration_pixels)
    held_out = tuple(ImageHash(label, digest) for label, digest in scored.pop('held_out'))
    write_record(output, CalibrationRecord(
        record.int8_model, record.int8_hash, record.fp32_model, record.fp32_hash,
        record.calibration, held_out,
        {k: scored[k] for k in ('recall', 'mean_iou', 'holdout_images')}))
    return {**report, **scored}


def _score_holdout(model: Path, output: Path, held_paths: list[Path], holdout: str,
                   limit: int, calibration: frozenset[str]) -> dict[str, Any]:
    """FP32 and INT8 side by side on the held-out frames that are not calibration images."""
    from cobot_hybrid_perception.calibration_record import pixels_sha256
    from cobot_hybrid_perception.detector import Detector, DetectorConfig
    from cobot_hybrid_perception.media import load_image
    from cobot_hybrid_perception.runtime_bench import agreement, bench_frames

    if holdout:
        frames: Any = ((f.label, f.pixels) for f in bench_frames(holdout, limit))
    else:
        frames = ((p.name, load_image(p, 'bgr8')) for p in held_paths[:limit])
    reference: list[list[list[float]]] = []
    candidate: list[list[list[float]]] = []
    held_out: list[tuple[str, str]] = []
    excluded = 0
    with contextlib.ExitStack() as stack:
        fp32 = Detector(DetectorConfig(model=str(model), backend='ort-cpu', precision='fp32'))
        stack.callback(fp32.close)
        int8 = Detector(DetectorConfig(model=str(output), backend='ort-cpu', precision='int8'))
        stack.callback(int8.close)
        for label, pixels in frames:
            digest = pixels_sha256(pixels)
            if digest in calibration:
                excluded += 1
                continue
            held_out.append((label, digest))
            reference.append(fp32.detect(pixels)[0].boxes.tolist())
            candidate.append(int8.detect(pixels)[0].boxes.tolist())
    if not held_out:
        return {'holdout_images': 0, 'holdout_excluded': excluded, 'recall': None,
                'mean_iou': None, 'agreement_boxes_fp32': 0, 'held_out': held_out}
    recall, mean_iou = agreement(reference, candidate)
    return {'holdout_images': len(held_out), 'holdout_excluded': excluded, 'recall': recall,
            'mean_iou': mean_iou, 'agreement_boxes_fp32': sum(len(r) for r in reference),
            'held_out': held_out}
