"""OpenVINO backend: the same ``.onnx`` read directly, compiled for one OpenVINO device.

OpenVINO is Intel's runtime: this code compiles for the ``CPU`` device by default, and the
same code targets an Intel GPU (``GPU``, ``GPU.1``) or NPU (``NPU``) through the
``openvino_device`` setting when such a device and its driver are present. One
``InferRequest`` is made once; the input is the letterbox tensor wrapped without a copy
(``shared_memory``) and re-wrapped only when a different buffer is passed, and the outputs are
the request's own tensors, so a frame costs one ``infer()``.

Precision is what the compiled model reports (``INFERENCE_PRECISION_HINT``). On the CPU we ask
for f32 explicitly: OpenVINO would otherwise pick bf16 on CPUs with AMX/AVX512-BF16, which
changes coordinates. On a GPU/NPU fp16 asked is f16. A QDQ INT8 model runs INT8 kernels.
Metadata is the ONNX custom metadata (read with ``onnx``), so :class:`ModelInfo` gets the same
values as with ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy.typing as npt

from cobot_hybrid_perception.backends.base import (
    BackendOptions,
    check_input,
    cpu_precision,
    model_hash,
)
from cobot_hybrid_perception.backends.onnx_facts import onnx_facts
from cobot_hybrid_perception.errors import BackendUnavailableError, ModelLoadError

__all__ = ['OpenVinoBackend', 'openvino_status']

_PRECISION_NAMES = {'f32': 'fp32', 'f16': 'fp16', 'bf16': 'bf16', 'i8': 'int8', 'u8': 'int8'}


def openvino_status() -> str | None:
    """None when the openvino package imports, else why not."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return 'openvino is not installed: pip install openvino (requirements/dev.txt has it)'
    return None


class OpenVinoBackend:
    """One ONNX model compiled by OpenVINO for one device, with one reused InferRequest."""

    def __init__(self, model: Path, options: BackendOptions) -> None:
        problem = openvino_status()
        if problem:
            raise BackendUnavailableError(problem)
        import openvino as ov

        if not model.is_file():
            raise ModelLoadError(f'model file {model} does not exist')
        facts = onnx_facts(model)
        device = options.openvino_device
        on_cpu = device.split('.')[0] == 'CPU'
        # The model's INT8, else f32 (f16 where a GPU/NPU is asked for fp16); int8 asked for
        # an FP32 model is refused: OpenVINO does not calibrate here.
        runs = cpu_precision('openvino', options.precision, facts.int8)
        hint = 'f16' if not on_cpu and runs == 'fp32' and options.precision == 'fp16' else 'f32'
        core = ov.Core()
        if device.split('.')[0] not in {d.split('.')[0] for d in core.available_devices}:
            raise BackendUnavailableError(f'OpenVINO device {device} is not present (this '
                                          f'machine has {core.available_devices})')
        try:
            network = core.read_model(str(model))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises bare RuntimeErrors
            raise ModelLoadError(f'OpenVINO cannot read {model}: {exc}') from None
        inputs = network.inputs
        if len(inputs) != 1 or inputs[0].get_element_type() != ov.Type.f32 \
                or inputs[0].get_partial_shape().rank.get_length() != 4:
            found = [(str(i.get_partial_shape()), str(i.get_element_type())) for i in inputs]
            raise ModelLoadError(f'{model}: expected one float32 NCHW input, got {found}')
        if not inputs[0].get_partial_shape().is_static:
            network.reshape({inputs[0].get_any_name(): [1, 3, *options.imgsz]})
        self.input_shape: tuple[int, int, int, int] = tuple(  # type: ignore[assignment]
            int(d) for d in network.input().get_shape())
        # INT8 kernels come from the QDQ graph; the hint is for everything else.
        config: dict[str, Any] = {'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_PRECISION_HINT': hint}
        if options.threads > 0 and on_cpu:
            config['INFERENCE_NUM_THREADS'] = options.threads
        try:
            self._compiled = core.compile_model(network, device, config)
        except Exception as exc:  # noqa: BLE001
            raise BackendUnavailableError(f'OpenVINO cannot compile {model.name} for {device}: '
                                          f'{exc}') from None
        got = self._compiled.get_property('INFERENCE_PRECISION_HINT').get_type_name()
        self.name = 'openvino' if on_cpu else f'openvino-{device.lower()}'
        self.precision = 'int8' if facts.int8 else _PRECISION_NAMES.get(got, got)
        self.metadata: Mapping[str, str] = dict(facts.metadata)
        self.model_hash = model_hash(model)
        self._ov = ov
        self._request = self._compiled.create_infer_request()
        self._outputs = len(self._compiled.outputs)
        self._bound_ptr: int | None = None

    def infer(self, tensor: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """Run on ``tensor`` (wrapped without a copy: pass the same buffer every frame)."""
        check_input(tensor, self.input_shape)
        ptr = tensor.ctypes.data
        if ptr != self._bound_ptr:
            self._request.set_input_tensor(self._ov.Tensor(tensor, shared_memory=True))
            self._bound_ptr = ptr
        self._request.infer()
        return [self._request.get_output_tensor(i).data for i in range(self._outputs)]

    def close(self) -> None:
        """Drop the request and the compiled model (OpenVINO frees their memory)."""
        self._request = None
        self._compiled = None
