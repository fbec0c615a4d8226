"""Native TensorRT backend (TensorRT 8.6 and 10.x Python API, CUDA through cuda-python).

* Engines are built from ONNX once and cached under ``cache_dir/engines`` with a key of model
  hash, GPU name, TensorRT version, precision and input size, so a restart deserialises in
  milliseconds instead of rebuilding for minutes. A timing cache per GPU + TensorRT version
  speeds up builds of other models and precisions.
* FP16 where the GPU has fast FP16; INT8 with an entropy calibrator over a folder of the
  user's images (letterboxed exactly like inference), its calibration cache kept beside.
* Execution by tensor address (``set_tensor_address`` + ``execute_async_v3``) on one CUDA
  stream, with device and pinned host buffers allocated once when the backend is built.
* An ``.engine`` file is loaded as is; an Ultralytics engine's JSON metadata header is read.

The pure parts (cache keys, calibration batches, the metadata header) are tested on any
machine; the rest needs an NVIDIA GPU with TensorRT and is tested only where one exists.
"""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.backends.base import BackendOptions, model_hash
from cobot_hybrid_perception.errors import BackendUnavailableError, ModelLoadError
from cobot_hybrid_perception.letterbox import Letterbox

__all__ = ['CudaTensor', 'TensorRTBackend', 'calibration_batches', 'cuda_status',
           'engine_cache_key', 'read_engine_metadata', 'tensorrt_status', 'timing_cache_name']

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def _slug(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9.]+', '-', text).strip('-').lower()


def engine_cache_key(model_digest: str, gpu_name: str, trt_version: str, precision: str,
                     input_hw: tuple[int, int]) -> str:
    """File name of a cached engine: everything that makes an engine invalid is in it."""
    return (f'{model_digest}-{_slug(gpu_name)}-trt{_slug(trt_version)}-{precision}-'
            f'{input_hw[0]}x{input_hw[1]}.engine')


def timing_cache_name(gpu_name: str, trt_version: str) -> str:
    """File name of the timing cache shared by every build on one GPU + TensorRT version."""
    return f'timing-{_slug(gpu_name)}-trt{_slug(trt_version)}.cache'


def read_engine_metadata(blob: bytes) -> tuple[dict[str, str], bytes]:
    """Split an Ultralytics engine (int32 length + JSON + engine) into metadata and engine."""
    if len(blob) > 4:
        length = int.from_bytes(blob[:4], 'little', signed=True)
        if 0 < length < min(len(blob) - 4, 1 << 20):
            try:
                meta = json.loads(blob[4:4 + length].decode('utf-8'))
            except (UnicodeDecodeError, json.JSONDecodeError):
                return {}, blob
            if isinstance(meta, dict):
                return {k: str(v) for k, v in meta.items()}, blob[4 + length:]
    return {}, blob


def calibration_batches(folder: Path, input_hw: tuple[int, int], limit: int
                        ) -> Iterator[npt.NDArray[np.float32]]:
    """Letterboxed (1, 3, H, W) tensors of up to ``limit`` images of a folder, sorted by name."""
    import cv2

    if not folder.is_dir():
        raise ModelLoadError(f'calibration folder {folder} does not exist; give a folder of '
                             'images like the ones the robot sees (a few hundred is typical)')
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise ModelLoadError(f'calibration folder {folder} holds no images '
                             f'({", ".join(IMAGE_SUFFIXES)})')
    letterbox = Letterbox(*input_hw)
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ModelLoadError(f'calibration image {path} cannot be decoded')
        letterbox(image, 'bgr8')
        yield letterbox.tensor.copy()


def cuda_status() -> str | None:
    """None when cuda-python sees a CUDA device, else why not."""
    try:
        cudart = _cudart()
    except BackendUnavailableError as exc:
        return str(exc)
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        return f'no CUDA device is visible ({err})'
    return None


def tensorrt_status() -> str | None:
    """None when TensorRT and a CUDA device are usable, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return 'the tensorrt Python package is not installed (JetPack ships it; on x86 ' \
               'pip install tensorrt)'
    return cuda_status()


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise BackendUnavailableError('cuda-python is not installed: pip install '
                                          'cuda-python (it moves the buffers for TensorRT)'
                                          ) from None
    return cudart


def _check(result: Any, what: str) -> Any:
    err, *values = result if isinstance(result, tuple) else (result,)
    cudart = _cudart()
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendUnavailableError(f'CUDA {what} failed: {err}')
    return values[0] if len(values) == 1 else values


class TensorRTBackend:
    """One TensorRT engine, its execution context, stream and buffers."""

    def __init__(self, model: Path, options: BackendOptions) -> None:
        reason = tensorrt_status()
        if reason is not None:
            raise BackendUnavailableError(f'TensorRT cannot run here: {reason}')
        import tensorrt as trt

        if not model.is_file():
            raise ModelLoadError(f'model file {model} does not exist')
        self._trt = trt
        self._cudart = _cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        _check(self._cudart.cudaSetDevice(options.device), 'cudaSetDevice')
        props = _check(self._cudart.cudaGetDeviceProperties(options.device),
                       'cudaGetDeviceProperties')
        raw_name = props.name
        self.gpu_name = raw_name.decode(errors='replace').rstrip('\x00') \
            if isinstance(raw_name, bytes) else str(raw_name)
        self.model_hash = model_hash(model)
        self.metadata: Mapping[str, str] = {}
        self.built = False
        if model.suffix == '.engine':
            self.metadata, engine_bytes = read_engine_metadata(model.read_bytes())
            self.precision = options.precision
        else:
            engine_bytes = self._load_or_build(model, options)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self._engine is None:
            raise ModelLoadError(f'TensorRT could not deserialise the engine for {model} '
                                 f'(built for another GPU or TensorRT version?)')
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate(), 'cudaStreamCreate')
        self._allocate()
        self.name = 'tensorrt'

    # --- engine ------------------------------------------------------------------------------

    def _onnx_metadata(self, model: Path) -> dict[str, str]:
        try:
            import onnx
        except ImportError:
            return {}
        proto = onnx.load(str(model), load_external_data=False)
        return {p.key: p.value for p in proto.metadata_props}

    def _load_or_build(self, model: Path, options: BackendOptions) -> bytes:
        trt = self._trt
        self.metadata = self._onnx_metadata(model)
        precision = options.precision
        builder = trt.Builder(self._logger)
        if precision == 'fp16' and not builder.platform_has_fast_fp16:
            raise BackendUnavailableError(f'{self.gpu_name} has no fast FP16; use precision '
                                          'fp32')
        if precision == 'int8' and not builder.platform_has_fast_int8:
            raise BackendUnavailableError(f'{self.gpu_name} has no fast INT8; use fp16')
        self.precision = precision
        network, parser = self._parse(builder, model)
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        shape = tuple(inputs[0].shape)
        input_hw = (shape[2], shape[3]) if shape[2] > 0 else options.imgsz
        engines = options.cache_dir / 'engines'
        engines.mkdir(parents=True, exist_ok=True)
        path = engines / engine_cache_key(self.model_hash, self.gpu_name, trt.__version__,
                                          precision, input_hw)
        if path.is_file():
            return path.read_bytes()
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
        timing_path = engines / timing_cache_name(self.gpu_name, trt.__version__)
        timing = config.create_timing_cache(timing_path.read_bytes()
                                            if timing_path.is_file() else b'')
        config.set_timing_cache(timing, ignore_mismatch=False)
        if precision in ('fp16', 'int8'):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == 'int8':
            if options.calib_dir is None:
                raise ModelLoadError('precision int8 needs calib_dir: a folder of images '
                                     'like the ones the robot sees')
            config.set_flag(trt.BuilderFlag.INT8)
            calib_cache = engines / f'{self.model_hash}-{input_hw[0]}x{input_hw[1]}.calib'
            config.int8_calibrator = _make_calibrator(
                trt, calibration_batches(options.calib_dir, input_hw, options.calib_images),
                (1, 3, *input_hw), calib_cache, self._cudart)
        if shape[2] <= 0:  # dynamic spatial size: one profile at the configured size
            profile = builder.create_optimization_profile()
            fixed = (1, 3, *input_hw)
            profile.set_shape(inputs[0].name, fixed, fixed, fixed)
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelLoadError(f'TensorRT failed to build an engine from {model} '
                                 f'({precision}); see the TensorRT log above')
        timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        blob = bytes(serialized)
        tmp = path.with_suffix('.tmp')
        tmp.write_bytes(blob)
        tmp.replace(path)  # never leave a half-written engine in the cache
        self.built = True
        return blob

    def _parse(self, builder: Any, model: Path) -> tuple[Any, Any]:
        trt = self._trt
        major = int(trt.__version__.split('.')[0])
        flags = 0 if major >= 10 else \
            1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(model.read_bytes()):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelLoadError(f'TensorRT cannot parse {model}: {errors}')
        return network, parser

    # --- buffers and execution ---------------------------------------------------------------

    def _allocate(self) -> None:
        trt = self._trt
        self._inputs: list[CudaTensor] = []
        self._outputs: list[CudaTensor] = []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(self._engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                shape = tuple(self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            # Inputs are copied up from the caller's array; outputs land in pinned host memory.
            buffer = CudaTensor(shape, dtype, self._cudart, pinned_host=not is_input)
            self._context.set_tensor_address(name, buffer.device_ptr)
            (self._inputs if is_input else self._outputs).append(buffer)
            if is_input:
                self.input_shape = shape  # type: ignore[assignment]
        if len(self._inputs) != 1:
            raise ModelLoadError(f'expected one input tensor, the engine has '
                                 f'{len(self._inputs)}')

    def infer(self, tensor: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """Copy the input up, run the engine on the stream, copy the outputs down."""
        self._inputs[0].upload(tensor, self._stream)
        if not self._context.execute_async_v3(self._stream):
            raise ModelLoadError('TensorRT execution failed; see the TensorRT log')
        for output in self._outputs:
            output.download(self._stream)
        _check(self._cudart.cudaStreamSynchronize(self._stream), 'stream synchronize')
        return [output.host for output in self._outputs if output.host is not None]

    def close(self) -> None:
        """Free device and pinned memory, the stream, the context and the engine."""
        cudart = getattr(self, '_cudart', None)
        if cudart is None:
            return
        for buffer in [*getattr(self, '_inputs', []), *getattr(self, '_outputs', [])]:
            buffer.free()
        if getattr(self, '_stream', None) is not None:
            cudart.cudaStreamDestroy(self._stream)
        self._inputs, self._outputs = [], []
        self._context = self._engine = self._runtime = self._stream = None
        self._cudart = None


class CudaTensor:
    """One device buffer of a fixed shape and dtype, with an optional pinned host mirror."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any], cudart: Any,
                 pinned_host: bool) -> None:
        self.shape, self.dtype, self._cudart = shape, np.dtype(dtype), cudart
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.device_ptr: int = _check(cudart.cudaMalloc(self.nbytes), 'cudaMalloc')
        self._host_ptr: int | None = None
        self.host: npt.NDArray[Any] | None = None
        if pinned_host:
            self._host_ptr = _check(cudart.cudaMallocHost(self.nbytes), 'cudaMallocHost')
            raw = np.ctypeslib.as_array((ctypes.c_byte * self.nbytes).from_address(
                self._host_ptr))
            self.host = raw.view(self.dtype).reshape(shape)

    def upload(self, array: npt.NDArray[Any], stream: Any) -> None:
        """Copy a C-contiguous array of exactly this size to the device (async on stream)."""
        if array.nbytes != self.nbytes or not array.flags.c_contiguous:
            raise ModelLoadError(f'input {array.shape} {array.dtype} does not match the '
                                 f'engine tensor {self.shape} {self.dtype}')
        _check(self._cudart.cudaMemcpyAsync(
            self.device_ptr, array.ctypes.data, self.nbytes,
            self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream), 'copy to device')

    def download(self, stream: Any) -> None:
        """Copy the device buffer into the pinned host mirror (async on stream)."""
        if self.host is None:
            raise ModelLoadError('this tensor has no host mirror')
        _check(self._cudart.cudaMemcpyAsync(
            self.host.ctypes.data, self.device_ptr, self.nbytes,
            self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream), 'copy to host')

    def free(self) -> None:
        """Release device and pinned memory (idempotent)."""
        if self.device_ptr:
            self._cudart.cudaFree(self.device_ptr)
            self.device_ptr = 0
        if self._host_ptr:
            self._cudart.cudaFreeHost(self._host_ptr)
            self._host_ptr, self.host = None, None


def _make_calibrator(trt: Any, batches: Iterator[npt.NDArray[np.float32]],
                     shape: tuple[int, ...], cache_path: Path, cudart: Any) -> Any:
    """Build an IInt8EntropyCalibrator2 feeding letterboxed images from one device buffer."""
    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self._batches = batches
            self._buffer = CudaTensor(shape, np.dtype(np.float32), cudart, pinned_host=False)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._buffer.upload(batch, 0)
            _check(cudart.cudaDeviceSynchronize(), 'calibration copy')
            return [self._buffer.device_ptr]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_path.write_bytes(bytes(cache))

    return _EntropyCalibrator()
