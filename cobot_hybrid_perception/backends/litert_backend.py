"""LiteRT backend: a ``.tflite`` (converted by onnx2tf) in the ``ai-edge-litert`` interpreter.

LiteRT (formerly TensorFlow Lite) is the runtime for ARM CPUs (XNNPACK) and Edge TPUs. onnx2tf
turns the model's NCHW input into NHWC, so each frame's letterbox tensor is transposed straight
into the interpreter's own (preallocated) input buffer; outputs transposed relative to the ONNX
model (``[1, N, 56]`` for ``[1, 56, N]``) are transposed back into buffers allocated once, so
the decoder sees exactly what ONNX Runtime gives. The interpreter refuses to run while a view
of its buffers is held, so views are taken and dropped within :meth:`LiteRtBackend.infer`.

onnx2tf drops the ONNX metadata: it comes from the sidecar ``<model>.json`` that
``cobot-hybrid export --format litert`` writes (:mod:`cobot_hybrid_perception.litert_model`).
Without one the config's ``class_names``/``task``/``kpt_shape`` apply, as for a bare ONNX.
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
from cobot_hybrid_perception.errors import BackendUnavailableError, ModelLoadError
from cobot_hybrid_perception.litert_model import read_sidecar, sidecar_path

__all__ = ['LiteRtBackend', 'litert_status']


def litert_status() -> str | None:
    """None when the LiteRT interpreter imports, else why not."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except ImportError:
        return 'ai-edge-litert is not installed: pip install ai-edge-litert'
    return None


class LiteRtBackend:
    """One ``.tflite`` model in one LiteRT interpreter (XNNPACK on the CPU)."""

    def __init__(self, model: Path, options: BackendOptions) -> None:
        problem = litert_status()
        if problem:
            raise BackendUnavailableError(problem)
        from ai_edge_litert.interpreter import Interpreter

        if not model.is_file():
            raise ModelLoadError(f'model file {model} does not exist')
        sidecar = read_sidecar(model)
        try:
            self._interpreter = Interpreter(model_path=str(model),
                                            num_threads=options.threads or None)
            self._interpreter.allocate_tensors()
        except Exception as exc:  # noqa: BLE001 - the interpreter raises bare ValueErrors
            raise ModelLoadError(f'LiteRT cannot load {model}: {exc}') from None
        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1 or inputs[0]['dtype'] != np.float32 or len(inputs[0]['shape']) != 4 \
                or 3 not in (inputs[0]['shape'][1], inputs[0]['shape'][3]):
            raise ModelLoadError(f'{model}: expected one float32 NHWC or NCHW image input, got '
                                 f'{[(d["shape"].tolist(), d["dtype"]) for d in inputs]}')
        shape = [int(d) for d in inputs[0]['shape']]
        self._nhwc = shape[3] == 3 and shape[1] != 3
        height, width = (shape[1], shape[2]) if self._nhwc else (shape[2], shape[3])
        self.input_shape = (1, 3, height, width)
        self._input_index = int(inputs[0]['index'])
        quantized = any(d['dtype'] in (np.int8, np.uint8)
                        for d in self._interpreter.get_tensor_details())
        self.name = 'litert'
        self.precision = cpu_precision('litert', options.precision, quantized)
        self.metadata: Mapping[str, str] = dict(sidecar.metadata) if sidecar else {}
        self.metadata_source = str(sidecar_path(model)) if sidecar else 'none (no sidecar)'
        self.model_hash = model_hash(model)
        expected = sidecar.onnx_outputs if sidecar else []
        self._outputs: list[tuple[int, bool]] = []
        self._buffers: list[npt.NDArray[Any]] = []
        for i, detail in enumerate(self._interpreter.get_output_details()):
            got = [int(d) for d in detail['shape']]
            want = expected[i] if i < len(expected) else got
            transpose = len(got) == 3 and got != want and got == [want[0], want[2], want[1]]
            if got != want and not transpose:
                raise ModelLoadError(f'{model}: output {i} has shape {got}, the ONNX model '
                                     f'{want} (per {sidecar_path(model).name}); re-export it')
            self._outputs.append((int(detail['index']), transpose))
            self._buffers.append(np.empty(want, np.float32))

    def infer(self, tensor: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """Run on the (1, 3, H, W) tensor; outputs in the ONNX model's layout (reused buffers)."""
        check_input(tensor, self.input_shape)
        view = self._interpreter.tensor(self._input_index)()
        np.copyto(view, tensor.transpose(0, 2, 3, 1) if self._nhwc else tensor)
        del view   # the interpreter refuses to run while a view of its buffers is alive
        self._interpreter.invoke()
        for (index, transpose), buffer in zip(self._outputs, self._buffers, strict=True):
            out = self._interpreter.tensor(index)()
            np.copyto(buffer, out.transpose(0, 2, 1) if transpose else out)
            del out
        return self._buffers

    def close(self) -> None:
        """Drop the interpreter."""
        self._interpreter = None
