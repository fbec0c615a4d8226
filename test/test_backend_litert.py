"""LiteRT: the converted default model against ONNX Runtime on real photos; sidecar; export.

The converted model comes from ``make litert-model`` (a separate TensorFlow environment, not
part of ``make setup``); the tests that need it skip with that reason when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from parity import assert_same_detections, detect_all

from cobot_hybrid_perception.detector import Detector, DetectorConfig
from cobot_hybrid_perception.errors import BackendUnavailableError, ModelLoadError
from cobot_hybrid_perception.litert_model import (
    SIDECAR_FORMAT,
    SIDECAR_MAX_BYTES,
    calibration_array,
    export_python,
    read_sidecar,
)
from cobot_hybrid_perception.models import default_model_path, resolve_model

# Measured here (AMD EPYC, 320, all five photos): boxes within 1.2e-4 px of ONNX Runtime,
# keypoints 3.7e-4 px, scores 4e-7; the tolerance is just above.
PIXEL_TOL = 1e-3
SCORE_TOL = 1e-5

CONVERTED = default_model_path(320, suffix='.tflite')
needs_converted = pytest.mark.skipif(
    not CONVERTED.is_file() or not CONVERTED.with_suffix('.json').is_file(),
    reason=f'no LiteRT conversion of the default model at {CONVERTED}: run `make litert-model`')
pytest.importorskip('ai_edge_litert', reason='ai-edge-litert is not installed '
                    '(requirements/dev.txt)')


def _export_env() -> bool:
    try:
        export_python()
    except BackendUnavailableError:
        return False
    return True


@pytest.fixture(scope='module')
def ort_reference() -> dict[str, tuple[np.ndarray, ...]]:
    detector = Detector(DetectorConfig(backend='ort-cpu', imgsz=320, threads=1))
    try:
        return detect_all(detector)
    finally:
        detector.close()


@needs_converted
def test_litert_finds_the_same_people_as_onnx_runtime(ort_reference: dict) -> None:
    detector = Detector(DetectorConfig(backend='litert', imgsz=320, threads=1))
    try:
        assert detector.model_path == CONVERTED   # `default` means the cached .tflite here
        assert detector.backend.name == 'litert' and detector.backend.precision == 'fp32'
        assert detector.info.task == 'pose' and detector.info.kpt_shape == (17, 3)
        assert detector.info.names == ('person',)
        assert_same_detections(detect_all(detector), ort_reference, PIXEL_TOL, SCORE_TOL)
    finally:
        detector.close()


@needs_converted
def test_without_a_sidecar_the_config_says_what_the_model_is(tmp_path: Path,
                                                            ort_reference: dict) -> None:
    bare = tmp_path / 'bare.tflite'
    shutil.copyfile(CONVERTED, bare)
    with pytest.raises(ModelLoadError, match='no class names'):
        Detector(DetectorConfig(model=str(bare), backend='litert'))
    detector = Detector(DetectorConfig(model=str(bare), backend='auto', class_names=('person',),
                                       task='pose', kpt_shape=(17, 3)))
    try:
        assert detector.backend.name == 'litert'
        assert detector.backend.metadata == {}
        assert_same_detections(detect_all(detector), ort_reference, PIXEL_TOL, SCORE_TOL)
    finally:
        detector.close()


@needs_converted
@pytest.mark.parametrize(('content', 'message'), [
    (b'{"format": "cobot_hybrid.litert-side', 'is not JSON'),
    (b'{"format": "something else", "metadata": {}}', 'is not a cobot_hybrid.litert-sidecar'),
    (json.dumps({'format': SIDECAR_FORMAT, 'metadata': {'names': 3}}).encode(),
     'must map strings to strings'),
    (json.dumps({'format': SIDECAR_FORMAT, 'metadata': {},
                 'onnx_outputs': [[1, 'x']]}).encode(), 'must be lists of ints'),
    (json.dumps({'format': SIDECAR_FORMAT, 'metadata': {},
                 'onnx_outputs': [[1, 57, 2100]]}).encode(), 'output 0 has shape'),
    (b' ' * (SIDECAR_MAX_BYTES + 1), 'is over'),
])
def test_a_bad_sidecar_is_a_load_error_naming_the_file(tmp_path: Path, content: bytes,
                                                      message: str) -> None:
    model = tmp_path / 'model.tflite'
    shutil.copyfile(CONVERTED, model)
    (tmp_path / 'model.json').write_bytes(content)
    with pytest.raises(ModelLoadError, match=message) as caught:
        Detector(DetectorConfig(model=str(model), backend='litert'))
    assert 'model.json' in str(caught.value)


def test_a_missing_sidecar_reads_as_none(tmp_path: Path) -> None:
    assert read_sidecar(tmp_path / 'nothing.tflite') is None


def _sidecar(**fields: object) -> bytes:
    return json.dumps({'format': SIDECAR_FORMAT, 'metadata': {}, **fields}).encode()


@pytest.mark.parametrize(('content', 'message'), [
    (b'{"format": "cobot_hybrid.litert-sidecar/1", "metadata": {}, "onnx_outputs": [[1'
     + b'0' * 5000 + b']]}', 'is refused (the file holds an integer of more than 4,300'),
    (b'{"format": "cobot_hybrid.litert-sidecar/1", "metadata": {}, "onnx_outputs": '
     + b'[' * 100_000 + b']' * 100_000 + b'}', 'is refused (the file is nested deeper'),
    (b'{"format": "cobot_hybrid.litert-sidecar/1", "metadata": {}, "onnx_outputs": [[NaN]]}',
     'is refused (NaN in the file'),
    (b'\xff{}', 'is not JSON (the file is not UTF-8'),
    (_sidecar(metadata={'names': '(' * 100_000}), 'is refused (a string of 100000 characters'),
    (_sidecar(onnx_outputs=[[-1, 56, 2100]]), 'shape [-1, 56, 2100] has a dimension outside'),
    (_sidecar(onnx_outputs=[[0, 56]]), 'has a dimension outside 1 to'),
    (_sidecar(onnx_outputs=[[1, 56, 2100]] * 17), 'at most 16 of at most 8'),
    (_sidecar(onnx_outputs=[[]]), 'must be lists of ints'),
    (_sidecar(onnx_outputs=[[1.5]]), 'must be lists of ints'),
])
def test_a_hostile_sidecar_is_a_load_error_not_a_traceback(tmp_path: Path, content: bytes,
                                                           message: str) -> None:
    (tmp_path / 'm.json').write_bytes(content)
    with pytest.raises(ModelLoadError) as caught:
        read_sidecar(tmp_path / 'm.tflite')
    assert message in str(caught.value) and 'm.json' in str(caught.value), caught.value
    assert len(str(caught.value)) < 400


def test_a_good_sidecar_reads_back(tmp_path: Path) -> None:
    (tmp_path / 'm.json').write_bytes(_sidecar(metadata={'stride': '32'},
                                               onnx_outputs=[[1, 56, 2100]]))
    sidecar = read_sidecar(tmp_path / 'm.tflite')
    assert sidecar is not None and sidecar.metadata == {'stride': '32'}
    assert sidecar.onnx_outputs == [[1, 56, 2100]]


def test_the_calibration_array_is_what_onnx2tf_expects() -> None:
    calib = calibration_array()
    assert calib.shape == (20, 128, 128, 3) and calib.dtype == np.float32
    assert 0.0 <= calib.min() < 0.2 and 0.8 < calib.max() <= 1.0
    assert not np.array_equal(calib[0], calib[5])   # different photos and crops


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', *args],
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, **(env or {})})


def test_export_without_the_export_environment_names_make_litert_model(tmp_path: Path) -> None:
    result = _cli('export', str(resolve_model('default', 320)), '--format', 'litert',
                  '--output', str(tmp_path / 'x.tflite'),
                  env={'COBOT_HYBRID_LITERT_PYTHON': str(tmp_path / 'no-python')})
    assert result.returncode == 2 and 'make litert-model' in result.stderr
    assert not (tmp_path / 'x.tflite').exists()


@pytest.mark.parametrize(('args', 'message'), [
    (['--imgsz', '640', '--format', 'litert'], '--imgsz is for a .pt export'),
    ([], 'is ONNX already'),
])
def test_export_of_an_onnx_refuses_what_it_would_ignore(args: list[str], message: str) -> None:
    result = _cli('export', str(resolve_model('default', 320)), *args)
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.skipif(not _export_env(), reason='no LiteRT export environment: run '
                    '`make litert-model` (TensorFlow + onnx2tf under build/litert-export)')
def test_export_converts_offline_and_writes_the_sidecar(tmp_path: Path) -> None:
    source = tmp_path / 'pose-320.onnx'
    shutil.copyfile(resolve_model('default', 320), source)
    before = source.read_bytes()
    result = _cli('export', str(source), '--format', 'litert')   # offline: run_isolated.sh
    assert result.returncode == 0, result.stderr[-3000:]
    tflite = tmp_path / 'pose-320.tflite'
    assert result.stdout.strip().splitlines()[-1] == str(tflite)
    assert source.read_bytes() == before                          # onnx2tf got a copy
    sidecar = read_sidecar(tflite)
    assert sidecar is not None and sidecar.onnx_outputs == [[1, 56, 2100]]
    assert sidecar.metadata['kpt_shape'] == '[17, 3]'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['pose-320.json', 'pose-320.onnx',
                                                          'pose-320.tflite']
