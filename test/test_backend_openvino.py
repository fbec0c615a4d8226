"""OpenVINO against ONNX Runtime on real photos: same people, same pixels; honest labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from parity import assert_same_detections, detect_all

pytest.importorskip('openvino', reason='openvino is not installed (requirements/dev.txt has it; '
                    'pip install openvino)')

from cobot_hybrid_perception.backends import BackendOptions, select_backend  # noqa: E402
from cobot_hybrid_perception.backends.openvino_backend import OpenVinoBackend  # noqa: E402
from cobot_hybrid_perception.detector import Detector, DetectorConfig  # noqa: E402
from cobot_hybrid_perception.errors import BackendUnavailableError, ConfigError  # noqa: E402
from cobot_hybrid_perception.models import resolve_model  # noqa: E402

# Measured here (AMD EPYC, AVX2; 320 and 640, all five photos): boxes differ from ONNX Runtime
# by at most 1.2e-4 px, keypoints by 3.7e-4 px, scores by 5e-7; the tolerance is just above.
PIXEL_TOL = 1e-3
SCORE_TOL = 1e-5


@pytest.mark.parametrize('imgsz', [320, 640])
def test_openvino_finds_the_same_people_as_onnx_runtime(imgsz: int, tmp_path: Path) -> None:
    results = {}
    infos = {}
    for backend in ('ort-cpu', 'openvino'):
        detector = Detector(DetectorConfig(backend=backend, imgsz=imgsz, threads=1,
                                           cache_dir=str(tmp_path)))
        try:
            results[backend] = detect_all(detector)
            infos[backend] = detector.info
            if backend == 'openvino':
                assert detector.backend.name == 'openvino'
                assert detector.backend.precision == 'fp32'
        finally:
            detector.close()
    assert infos['openvino'] == infos['ort-cpu']      # the same metadata, read with onnx
    assert_same_detections(results['openvino'], results['ort-cpu'], PIXEL_TOL, SCORE_TOL)


def test_precision_is_what_the_compiled_model_reports(tmp_path: Path) -> None:
    backend = OpenVinoBackend(resolve_model('default', 320), BackendOptions(
        precision='fp32', cache_dir=tmp_path))
    try:
        hint = backend._compiled.get_property('INFERENCE_PRECISION_HINT').get_type_name()
        assert hint == 'f32' and backend.precision == 'fp32'
        assert backend.input_shape == (1, 3, 320, 320)
        assert backend.metadata['task'] == 'pose'
        tensor = np.zeros(backend.input_shape, np.float32)
        first = backend.infer(tensor)[0]
        ptr = first.ctypes.data
        tensor[:] = 0.5                    # same buffer, new pixels: no re-wrap, new result
        second = backend.infer(tensor)[0]
        assert second.ctypes.data == ptr and second.shape == (1, 56, 2100)
    finally:
        backend.close()


def test_a_qdq_model_runs_int8_on_openvino(qdq_model: Path, tmp_path: Path) -> None:
    choice = select_backend('openvino', qdq_model, BackendOptions(precision='int8',
                                                                  cache_dir=tmp_path))
    try:
        assert choice.backend.precision == 'int8'
        out = choice.backend.infer(np.ones(choice.backend.input_shape, np.float32))
        assert out[0].shape == (1, 4, 32, 32)
    finally:
        choice.backend.close()
    with pytest.raises(BackendUnavailableError, match='cobot-hybrid quantize MODEL --calib'):
        select_backend('openvino', qdq_model.with_name('fp32.onnx'),
                       BackendOptions(precision='int8', cache_dir=tmp_path))


def test_an_absent_openvino_device_is_refused_with_what_is_there(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"OpenVINO device NPU is not present "
                                                      r"\(this machine has \['CPU'"):
        OpenVinoBackend(resolve_model('default', 320),
                        BackendOptions(openvino_device='NPU', cache_dir=tmp_path))


@pytest.mark.parametrize('device', ['TPU', 'cpu', 'GPU.x', 'CPU;rm'])
def test_openvino_device_is_validated(device: str) -> None:
    with pytest.raises(ConfigError, match='openvino_device'):
        DetectorConfig(openvino_device=device)
