"""Static INT8 (QDQ) quantization of an ONNX detector, calibrated on the user's images.

The calibration images are letterboxed exactly as at inference. The detection head's last
module (box decoding, concatenation: the part whose outputs are pixel coordinates) stays in
FP32, the usual recipe for YOLO models, because quantizing coordinates in the hundreds to
8 bits costs pixels. The result is checked against the FP32 model on the same images.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cobot_hybrid_perception.errors import ModelLoadError

__all__ = ['head_nodes', 'quantize_int8']


def head_nodes(node_names: list[str]) -> list[str]:
    """Names of the nodes of the last ``/model.N/`` module (the detection head)."""
    indices = [int(m.group(1)) for name in node_names
               if (m := re.match(r'^/model\.(\d+)/', name))]
    if not indices:
        return []
    last = f'/model.{max(indices)}/'
    return [name for name in node_names if name.startswith(last)]


def quantize_int8(model: Path, calib_dir: Path, output: Path | None = None,
                  images: int = 64) -> dict[str, Any]:
    """Write ``<model>-int8.onnx`` (or ``output``); return agreement with FP32."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from cobot_hybrid_perception.backends.tensorrt_backend import calibration_batches
    from cobot_hybrid_perception.detector import Detector, DetectorConfig
    from cobot_hybrid_perception.runtime_bench import agreement

    if not model.is_file() or model.suffix != '.onnx':
        raise ModelLoadError(f'quantize needs an FP32 .onnx model; {model} is not one')
    output = output or model.with_name(model.stem + '-int8.onnx')
    proto = onnx.load(str(model))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    input_hw = (dims[2].dim_value, dims[3].dim_value)
    input_name = proto.graph.input[0].name
    if min(input_hw) <= 0:
        raise ModelLoadError(f'{model} has a dynamic input size; export it at a fixed size')
    batches = list(calibration_batches(calib_dir, input_hw, images))

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

    from cobot_hybrid_perception.media import load_image

    paths = sorted(p for p in calib_dir.iterdir()
                   if p.suffix.lower() in ('.jpg', '.jpeg', '.png', '.bmp', '.webp'))[:images]
    results = []
    for path_model in (model, output):
        detector = Detector(DetectorConfig(model=str(path_model), backend='ort-cpu'))
        try:
            results.append([detector.detect(load_image(p, 'bgr8'))[0].boxes.tolist()
                            for p in paths])
        finally:
            detector.close()
    recall, mean_iou = agreement(results[0], results[1])
    return {'output': str(output), 'images': len(paths), 'recall': recall,
            'mean_iou': mean_iou, 'fp32_size_mb': model.stat().st_size / 2**20,
            'int8_size_mb': output.stat().st_size / 2**20,
            'head_nodes_kept_fp32': len(head_nodes(names)),
            'agreement_boxes_fp32': int(np.sum([len(r) for r in results[0]]))}
