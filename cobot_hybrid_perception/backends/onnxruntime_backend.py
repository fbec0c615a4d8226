"""ONNX Runtime backend: TensorRT EP -> CUDA EP -> CPU EP, IO binding, no per-frame allocation.

``provider`` names one execution provider (``tensorrt``, ``cuda``, ``cpu``). The session is
checked after creation: ONNX Runtime silently falls back to the CPU when a GPU provider's
libraries fail to load, and we refuse that instead of running slowly without saying so.
Input and output are bound once to fixed host buffers (the letterbox tensor and a
preallocated output), so a frame costs one ``run_with_iobinding``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.backends.base import (
    BackendOptions,
    check_input,
    cpu_precision,
    model_hash,
)
from cobot_hybrid_perception.backends.onnx_facts import onnx_facts
from cobot_hybrid_perception.errors import BackendUnavailableError, ModelLoadError

__all__ = ['PROVIDERS', 'OnnxRuntimeBackend', 'available_providers']

PROVIDERS = {'tensorrt': 'TensorrtExecutionProvider', 'cuda': 'CUDAExecutionProvider',
             'cpu': 'CPUExecutionProvider'}


def available_providers() -> list[str]:
    """Short names of the execution providers this onnxruntime build has."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    have = set(ort.get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in have]


class OnnxRuntimeBackend:
    """One ONNX model in one ONNX Runtime session on one execution provider."""

    def __init__(self, model: Path, provider: str, options: BackendOptions) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError('onnxruntime is not installed: pip install '
                                          'onnxruntime (CPU) or onnxruntime-gpu') from None
        if provider not in PROVIDERS:
            raise BackendUnavailableError(f'unknown ONNX Runtime provider {provider!r}; use '
                                          f'one of {sorted(PROVIDERS)}')
        if provider not in available_providers():
            raise BackendUnavailableError(
                f'this onnxruntime build has no {PROVIDERS[provider]} (it has '
                f'{ort.get_available_providers()}); install onnxruntime-gpu for CUDA/TensorRT')
        if not model.is_file():
            raise ModelLoadError(f'model file {model} does not exist')
        self.name = f'ort-{provider}'
        if provider != 'cpu':   # refused before a GPU session builds anything
            self.precision = self._precision(provider, model, options.precision)
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.threads > 0:
            session_options.intra_op_num_threads = options.threads
            session_options.inter_op_num_threads = 1
        providers: list[Any] = [(PROVIDERS[provider], self._provider_options(provider, model,
                                                                             options))]
        if provider != 'cpu':
            providers.append('CPUExecutionProvider')  # only for ops the GPU EP lacks
        try:
            self._session = ort.InferenceSession(str(model), session_options,
                                                 providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises bare RuntimeErrors
            raise ModelLoadError(f'ONNX Runtime cannot load {model}: {exc}') from None
        if provider == 'cpu':   # after the session: a corrupt file is ONNX Runtime's to report
            self.precision = self._precision(provider, model, options.precision)
        got = self._session.get_providers()
        if not got or got[0] != PROVIDERS[provider]:
            raise BackendUnavailableError(
                f'{PROVIDERS[provider]} failed to initialise (session runs on {got}); check '
                'the CUDA/cuDNN/TensorRT libraries, or ask for backend ort-cpu explicitly')
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or inputs[0].type != 'tensor(float)' or len(inputs[0].shape) != 4:
            raise ModelLoadError(f'{model}: expected one float32 NCHW input, got '
                                 f'{[(i.name, i.type, i.shape) for i in inputs]}')
        shape = [d if isinstance(d, int) else None for d in inputs[0].shape]
        height = shape[2] or options.imgsz[0]
        width = shape[3] or options.imgsz[1]
        self.input_shape = (1, 3, int(height), int(width))
        self.metadata: Mapping[str, str] = dict(
            self._session.get_modelmeta().custom_metadata_map)
        self.model_hash = model_hash(model)
        self._input_name = inputs[0].name
        self._output_names = [o.name for o in outputs]
        self._outputs: list[npt.NDArray[Any] | None] = [
            np.empty(o.shape, np.float32) if all(isinstance(d, int) for d in o.shape)
            and o.type == 'tensor(float)' else None for o in outputs]
        self._binding = self._session.io_binding()
        self._bound_ptr: int | None = None
        for name, buffer in zip(self._output_names, self._outputs, strict=True):
            if buffer is None:
                self._binding.bind_output(name, 'cpu')
            else:
                self._binding.bind_output(name, 'cpu', 0, np.float32, list(buffer.shape),
                                          buffer.ctypes.data)

    @staticmethod
    def _precision(provider: str, model: Path, asked: str) -> str:
        """Tell what the session really runs; refuse INT8 where it would silently run FP32."""
        if provider == 'cpu':
            return cpu_precision('ort-cpu', asked, onnx_facts(model).int8)
        if asked == 'int8':
            why = ('its INT8 needs a calibration ONNX Runtime does not do here'
                   if provider == 'tensorrt' else 'the CUDA EP has no INT8 kernels')
            raise BackendUnavailableError(
                f'ort-{provider} would run precision int8 as fp32 ({why}): use backend '
                'tensorrt with calib_dir (it calibrates INT8), or run `cobot-hybrid quantize '
                'MODEL --calib DIR` and pass the -int8.onnx to ort-cpu or openvino')
        return 'fp16' if provider == 'tensorrt' and asked == 'fp16' else 'fp32'

    @staticmethod
    def _provider_options(provider: str, model: Path, options: BackendOptions
                          ) -> dict[str, Any]:
        if provider == 'cpu':
            return {}
        if provider == 'cuda':
            return {'device_id': options.device}
        cache = options.cache_dir / 'ort_trt' / model_hash(model)
        cache.mkdir(parents=True, exist_ok=True)
        return {'device_id': options.device, 'trt_fp16_enable': options.precision == 'fp16',
                'trt_engine_cache_enable': True, 'trt_engine_cache_path': str(cache),
                'trt_timing_cache_enable': True, 'trt_timing_cache_path': str(cache)}

    def infer(self, tensor: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """Run on ``tensor`` (bound by address: pass the same buffer every frame)."""
        check_input(tensor, self.input_shape)
        ptr = tensor.ctypes.data
        if ptr != self._bound_ptr:
            self._binding.bind_input(self._input_name, 'cpu', 0, np.float32,
                                     list(self.input_shape), ptr)
            self._bound_ptr = ptr
        self._session.run_with_iobinding(self._binding)
        if all(buffer is not None for buffer in self._outputs):
            return [buffer for buffer in self._outputs if buffer is not None]
        return list(self._binding.copy_outputs_to_cpu())

    def run_plain(self, tensor: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """``session.run`` without IO binding (the reference the benchmark compares with)."""
        return list(self._session.run(self._output_names, {self._input_name: tensor}))

    def close(self) -> None:
        """Drop the session (ONNX Runtime frees its memory with it)."""
        self._binding = None  # type: ignore[assignment]
        self._session = None  # type: ignore[assignment]
