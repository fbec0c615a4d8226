"""The seam between the detector and an inference runtime.

A backend takes the preprocessed ``float32`` NCHW tensor (the same buffer every frame) and
returns the model's raw outputs. It owns its runtime resources, allocated once when it is
built: sessions, engines, device buffers, bindings. ``close()`` releases them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.errors import BackendUnavailableError, ModelLoadError

__all__ = ['BackendOptions', 'InferenceBackend', 'INT8_HOWTO', 'check_input', 'cpu_precision',
           'file_key', 'model_hash']

#: What to do when INT8 is asked for a runtime that cannot calibrate (said in its error).
INT8_HOWTO = ('run `cobot-hybrid quantize MODEL --calib DIR` (your images) and pass the '
              '-int8.onnx it writes, or use backend tensorrt with calib_dir')


@dataclass(frozen=True)
class BackendOptions:
    """What any backend may use; each takes the fields that apply to it."""

    precision: str = 'fp16'            # fp32 | fp16 | int8 (GPU backends; CPU runs fp32)
    device: int = 0                    # CUDA device index
    openvino_device: str = 'CPU'       # OpenVINO device: CPU, GPU, GPU.1, NPU
    threads: int = 0                   # CPU intra-op threads (0: runtime default)
    cache_dir: Path = Path('.')        # engines, timing caches, calibration caches
    calib_dir: Path | None = None      # images for INT8 calibration
    calib_images: int = 64
    imgsz: tuple[int, int] = (640, 640)  # only for models without static input size


class InferenceBackend(Protocol):
    """A runtime ready to run one model."""

    name: str                          # e.g. 'tensorrt', 'ort-cuda', 'ort-cpu'
    precision: str                     # what it really runs: fp32, fp16, int8
    input_shape: tuple[int, int, int, int]
    metadata: Mapping[str, str]        # ONNX custom metadata (Ultralytics writes names...)

    def infer(self, tensor: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """Run the model on the (1, 3, H, W) float32 input; return its outputs."""
        ...

    def close(self) -> None:
        """Release sessions, engines and device memory."""
        ...


def cpu_precision(backend: str, asked: str, model_int8: bool) -> str:
    """Tell what a CPU runtime runs: the model's INT8 if it is quantized, else fp32.

    INT8 asked for an FP32 model is refused (these runtimes do not calibrate); fp16 asked runs
    fp32 (no fast fp16 on CPUs), which the backend choice's reason says.
    """
    if model_int8:
        return 'int8'
    if asked == 'int8':
        raise BackendUnavailableError(f'{backend} runs INT8 only from an INT8 (QDQ) model and '
                                      f'this one is FP32: {INT8_HOWTO}')
    return 'fp32'


_HASH_CACHE: dict[tuple[str, int, int, int, int], str] = {}


def check_input(tensor: npt.NDArray[Any], shape: tuple[int, ...]) -> None:
    """Refuse an input that is not the model's (1, 3, H, W) float32, C-contiguous."""
    if tuple(tensor.shape) != shape or tensor.dtype != np.float32 \
            or not tensor.flags.c_contiguous:
        raise ModelLoadError(f'input tensor {tensor.shape} {tensor.dtype} does not match '
                             f'the model input {shape} float32')


def file_key(path: Path) -> tuple[str, int, int, int, int]:
    """Identify a file's content without reading it: path, size, inode, mtime, ctime.

    The ctime (nanoseconds) changes on every write and rename, even when a copy keeps the
    size and sets the old mtime back, so a swapped model is read again.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelLoadError(f'model {path} cannot be read: {exc.strerror}') from None
    return (str(path.resolve()), stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns)


def model_hash(path: Path) -> str:
    """First 16 hex digits of the SHA-256 of a model file (cached by :func:`file_key`)."""
    key = file_key(path)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with path.open('rb') as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b''):
                digest.update(chunk)
        _HASH_CACHE[key] = digest.hexdigest()[:16]
    return _HASH_CACHE[key]
