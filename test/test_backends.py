"""Backend choice, ONNX Runtime IO binding, and the TensorRT parts that need no GPU."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cobot_hybrid_perception.backends import BackendOptions, create_backend, select_backend
from cobot_hybrid_perception.backends.onnxruntime_backend import (
    OnnxRuntimeBackend,
    available_providers,
)
from cobot_hybrid_perception.backends.tensorrt_backend import (
    CudaTensor,
    _cudart,
    calibration_batches,
    cuda_status,
    engine_cache_key,
    read_engine_metadata,
    tensorrt_status,
    timing_cache_name,
)
from cobot_hybrid_perception.errors import BackendUnavailableError, ModelLoadError
from cobot_hybrid_perception.media import load_image, sample_photo_path
from cobot_hybrid_perception.models import resolve_model


@pytest.fixture(scope='module')
def model_320() -> Path:
    try:
        return resolve_model('default', 320)
    except ModelLoadError as exc:
        pytest.fail(f'{exc} (make setup exports it)')


def options(tmp_path: Path, **kw: object) -> BackendOptions:
    return BackendOptions(cache_dir=tmp_path, **kw)  # type: ignore[arg-type]


def test_auto_picks_what_runs_and_says_why_it_passed_over_the_rest(model_320: Path,
                                                                   tmp_path: Path) -> None:
    choice = select_backend('auto', model_320, options(tmp_path))
    try:
        if 'cuda' not in available_providers() and tensorrt_status() is not None:
            assert choice.backend.name in ('ort-cpu', 'openvino')   # the faster one here
            assert 'passed over tensorrt' in choice.reason
            assert 'CUDAExecutionProvider' in choice.reason
        assert choice.reason.startswith('auto picked')
        assert ' ms' in choice.reason and 'measured now' in choice.reason
    finally:
        choice.backend.close()


@pytest.mark.skipif('cuda' in available_providers(), reason='this machine has a CUDA EP')
def test_a_gpu_backend_asked_for_by_name_is_an_error_not_a_slow_path(model_320: Path,
                                                                     tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match='CUDAExecutionProvider'):
        select_backend('ort-cuda', model_320, options(tmp_path))


@pytest.mark.skipif(tensorrt_status() is None, reason='TensorRT and a GPU are present')
def test_tensorrt_asked_for_without_tensorrt_says_what_is_missing(model_320: Path,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match='TensorRT cannot run here'):
        select_backend('tensorrt', model_320, options(tmp_path))


@pytest.mark.parametrize(('name', 'suffix', 'error', 'message'), [
    ('ort-cpu', '.onnx', ModelLoadError, 'does not exist'),
    ('ort-cpu', '.bin', ModelLoadError, 'unsupported file type'),
    ('ort-cpu', '.tflite', BackendUnavailableError, 'cannot run a .tflite model'),
    ('openvino', '.pt', BackendUnavailableError, 'cannot run a .pt model'),
    ('litert', '.onnx', BackendUnavailableError, 'runs with tensorrt, ort-tensorrt'),
    ('ultralytics', '.onnx', BackendUnavailableError, 'cannot run a .onnx model'),
    ('warp-drive', '.onnx', BackendUnavailableError, 'unknown backend'),
])
def test_backend_and_model_mismatches(tmp_path: Path, name: str, suffix: str, error: type,
                                      message: str) -> None:
    model = tmp_path / f'model{suffix}'
    if message != 'does not exist':
        model.write_bytes(b'x')
    with pytest.raises(error, match=message):
        select_backend(name, model, options(tmp_path))


def test_corrupt_model_file_is_a_load_error(tmp_path: Path) -> None:
    model = tmp_path / 'broken.onnx'
    model.write_bytes(b'\x08\x07 this is not a protobuf' * 10)
    with pytest.raises(ModelLoadError, match='ONNX Runtime cannot load'):
        create_backend('ort-cpu', model, options(tmp_path))


def test_io_binding_equals_plain_session_run(model_320: Path, tmp_path: Path) -> None:
    backend = OnnxRuntimeBackend(model_320, 'cpu', options(tmp_path, threads=1))
    try:
        assert backend.input_shape == (1, 3, 320, 320)
        assert backend.metadata['task'] == 'pose'
        rng = np.random.default_rng(0)
        tensor = rng.random(backend.input_shape, dtype=np.float32)
        bound = [o.copy() for o in backend.infer(tensor)]
        plain = backend.run_plain(tensor)
        np.testing.assert_allclose(bound[0], plain[0], rtol=1e-5, atol=1e-4)
        tensor[:] = rng.random(backend.input_shape, dtype=np.float32)  # same buffer, new data
        again = backend.infer(tensor)
        assert not np.allclose(again[0], bound[0])
        with pytest.raises(ModelLoadError, match='does not match'):
            backend.infer(np.zeros((1, 3, 64, 64), np.float32))
    finally:
        backend.close()


# --- TensorRT: pure parts ----------------------------------------------------------------------

def test_engine_cache_key_changes_with_everything_that_invalidates_an_engine() -> None:
    base = ('abc123', 'NVIDIA Orin (nvgpu)', '10.3.0', 'fp16', (640, 640))
    key = engine_cache_key(*base)
    assert key == 'abc123-nvidia-orin-nvgpu-trt10.3.0-fp16-640x640.engine'
    for index, value in enumerate(('abc124', 'NVIDIA H100', '8.6.1', 'int8', (320, 320))):
        changed = list(base)
        changed[index] = value
        assert engine_cache_key(*changed) != key  # type: ignore[arg-type]
    assert timing_cache_name('NVIDIA H100 80GB HBM3', '10.3.0') == \
        'timing-nvidia-h100-80gb-hbm3-trt10.3.0.cache'


def test_ultralytics_engine_metadata_header_is_split_off() -> None:
    meta = {'names': {0: 'person'}, 'imgsz': [640, 640], 'task': 'pose'}
    text = json.dumps(meta).encode()
    blob = len(text).to_bytes(4, 'little') + text + b'ENGINEBYTES'
    parsed, engine = read_engine_metadata(blob)
    assert engine == b'ENGINEBYTES'
    assert parsed['task'] == 'pose' and parsed['imgsz'] == '[640, 640]'
    plain = b'\x00\x01\x02\x03raw engine without header'
    assert read_engine_metadata(plain) == ({}, plain)


def test_calibration_batches_are_letterboxed_like_inference(tmp_path: Path) -> None:
    for name in ('bus', 'zidane', 'coffee'):
        cv2.imwrite(str(tmp_path / f'{name}.jpg'), load_image(sample_photo_path(name), 'bgr8'))
    (tmp_path / 'notes.txt').write_text('not an image')
    batches = list(calibration_batches(tmp_path, (320, 320), limit=2))
    assert len(batches) == 2 and batches[0].shape == (1, 3, 320, 320)
    assert batches[0].dtype == np.float32 and 0.0 <= batches[0].min() <= batches[0].max() <= 1
    assert not np.array_equal(batches[0], batches[1])


@pytest.mark.parametrize(('make', 'message'), [('missing', 'does not exist'),
                                               ('empty', 'holds no images')])
def test_calibration_folder_problems_are_explained(tmp_path: Path, make: str,
                                                   message: str) -> None:
    folder = tmp_path / 'calib'
    if make == 'empty':
        folder.mkdir()
    with pytest.raises(ModelLoadError, match=message):
        list(calibration_batches(folder, (320, 320), limit=4))


# --- on a GPU ---------------------------------------------------------------------------------

@pytest.mark.skipif(cuda_status() is not None,
                    reason=f'needs a CUDA device and cuda-python: {cuda_status()}')
def test_cuda_tensors_move_data_up_and_down_like_the_tensorrt_backend() -> None:
    cudart = _cudart()
    _, stream = cudart.cudaStreamCreate()
    source = np.random.default_rng(2).random((1, 3, 64, 64), dtype=np.float32)
    up = CudaTensor(source.shape, source.dtype, cudart, pinned_host=False)
    down = CudaTensor(source.shape, source.dtype, cudart, pinned_host=True)
    try:
        up.upload(source, stream)
        copy = cudart.cudaMemcpyAsync(down.device_ptr, up.device_ptr, up.nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream)
        assert copy[0] == cudart.cudaError_t.cudaSuccess
        down.download(stream)
        cudart.cudaStreamSynchronize(stream)
        assert down.host is not None
        np.testing.assert_array_equal(down.host, source)
        with pytest.raises(ModelLoadError, match='does not match'):
            up.upload(np.zeros((1, 3, 32, 32), np.float32), stream)
    finally:
        up.free()
        down.free()
        down.free()  # idempotent
        cudart.cudaStreamDestroy(stream)


@pytest.mark.skipif(tensorrt_status() is not None,
                    reason=f'needs an NVIDIA GPU with TensorRT: {tensorrt_status()}')
def test_tensorrt_engine_agrees_with_onnxruntime_and_is_cached(model_320: Path,
                                                               tmp_path: Path) -> None:
    from cobot_hybrid_perception.backends.tensorrt_backend import TensorRTBackend

    tensor = np.random.default_rng(1).random((1, 3, 320, 320), dtype=np.float32)
    reference = OnnxRuntimeBackend(model_320, 'cpu', options(tmp_path)).infer(tensor)[0].copy()
    first = TensorRTBackend(model_320, options(tmp_path, precision='fp32'))
    try:
        assert first.built
        np.testing.assert_allclose(first.infer(tensor)[0], reference, atol=0.05, rtol=0.01)
    finally:
        first.close()
    second = TensorRTBackend(model_320, options(tmp_path, precision='fp32'))
    try:
        assert not second.built  # deserialised from the engine cache
    finally:
        second.close()


# --- honest labels and sizes (issue 17) --------------------------------------------------------

def test_fp16_asked_on_the_cpu_runs_fp32_and_the_reason_says_so(model_320: Path,
                                                               tmp_path: Path) -> None:
    choice = select_backend('ort-cpu', model_320, options(tmp_path, precision='fp16'))
    try:
        assert choice.backend.precision == 'fp32'
        assert choice.reason == ('ort-cpu asked for by name; runs fp32, not the fp16 asked for '
                                 '(ort-cpu has no fp16 path on this device)')
    finally:
        choice.backend.close()


def test_int8_asked_for_an_fp32_model_on_the_cpu_says_how_to_get_one(model_320: Path,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError,
                       match=r'ort-cpu runs INT8 only from an INT8 \(QDQ\) model.*'
                             r'cobot-hybrid quantize MODEL --calib DIR.*-int8.onnx'):
        select_backend('ort-cpu', model_320, options(tmp_path, precision='int8'))


@pytest.mark.parametrize(('provider', 'message'), [
    ('tensorrt', 'ort-tensorrt would run precision int8 as fp32.*backend tensorrt with '
                 'calib_dir'),
    ('cuda', 'ort-cuda would run precision int8 as fp32 .the CUDA EP has no INT8 kernels'),
])
def test_int8_on_ort_gpu_providers_is_refused_not_run_as_fp32(model_320: Path, provider: str,
                                                              message: str) -> None:
    with pytest.raises(BackendUnavailableError, match=message):
        OnnxRuntimeBackend._precision(provider, model_320, 'int8')
    assert OnnxRuntimeBackend._precision('tensorrt', model_320, 'fp16') == 'fp16'
    assert OnnxRuntimeBackend._precision('cuda', model_320, 'fp16') == 'fp32'


def test_a_qdq_model_is_int8_on_ort_cpu(qdq_model: Path, tmp_path: Path) -> None:
    choice = select_backend('ort-cpu', qdq_model, options(tmp_path, precision='int8'))
    try:
        assert choice.backend.precision == 'int8'
        assert choice.reason == 'ort-cpu asked for by name'
        out = choice.backend.infer(np.ones(choice.backend.input_shape, np.float32))
        assert out[0].shape == (1, 4, 32, 32)
    finally:
        choice.backend.close()
    fp32 = select_backend('ort-cpu', qdq_model.with_name('fp32.onnx'), options(tmp_path))
    try:
        assert fp32.backend.precision == 'fp32'
    finally:
        fp32.backend.close()


def test_onnx_facts_without_weights(model_320: Path, qdq_model: Path) -> None:
    from cobot_hybrid_perception.backends.onnx_facts import onnx_facts

    facts = onnx_facts(model_320)
    assert not facts.int8 and facts.outputs == ((1, 56, 2100),)
    assert facts.metadata['kpt_shape'] == '[17, 3]' and facts.metadata['imgsz'] == '[320, 320]'
    assert onnx_facts(qdq_model).int8


@pytest.mark.parametrize(('imgsz', 'ok'), [(0, True), (320, True), (640, False)])
def test_imgsz_must_match_the_model_unless_left_at_0(model_320: Path, imgsz: int,
                                                     ok: bool) -> None:
    from cobot_hybrid_perception.detector import Detector, DetectorConfig
    from cobot_hybrid_perception.errors import ConfigError

    cfg = DetectorConfig(model=str(model_320), backend='ort-cpu', imgsz=imgsz)
    if not ok:
        with pytest.raises(ConfigError, match=r'imgsz 640 does not match the input of '
                                              r'yolo11n-pose-320.onnx \(320x320\)'):
            Detector(cfg)
        return
    detector = Detector(cfg)
    try:
        assert detector.info.imgsz == (320, 320)
    finally:
        detector.close()


def test_the_default_config_starts_on_a_cpu_only_machine(tmp_path: Path) -> None:
    from cobot_hybrid_perception.detector import DEFAULT_IMGSZ, Detector, DetectorConfig

    cfg = DetectorConfig(cache_dir=str(tmp_path))
    assert (cfg.imgsz, cfg.precision, cfg.backend) == (0, 'fp16', 'auto')
    detector = Detector(cfg)
    try:
        assert detector.info.imgsz == (DEFAULT_IMGSZ, DEFAULT_IMGSZ)
        assert detector.backend.precision in ('fp32', 'fp16')
    finally:
        detector.close()


def test_a_model_swapped_in_place_is_hashed_again(tmp_path: Path) -> None:
    import os

    from cobot_hybrid_perception.backends.base import model_hash

    model = tmp_path / 'm.onnx'
    model.write_bytes(b'a' * 64)
    first = model_hash(model)
    stat = model.stat()
    swap = tmp_path / 'swap.onnx'
    swap.write_bytes(b'b' * 64)   # same size
    os.utime(swap, ns=(stat.st_atime_ns, stat.st_mtime_ns))   # and the old mtime
    swap.replace(model)
    assert model_hash(model) != first
