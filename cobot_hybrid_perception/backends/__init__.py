"""Inference backends behind one interface, and the choice among them.

================  =============  ===========================================================
``backend``       model file     runs
================  =============  ===========================================================
``tensorrt``      .onnx/.engine  native TensorRT engine (built from ONNX, cached); fp16, int8
``ort-tensorrt``  .onnx          ONNX Runtime, TensorRT execution provider (own engine cache)
``ort-cuda``      .onnx          ONNX Runtime, CUDA execution provider (fp32)
``ort-cpu``       .onnx          ONNX Runtime on the CPU (vendor-neutral); int8 from QDQ models
``openvino``      .onnx          OpenVINO on the CPU (an Intel GPU/NPU with openvino_device)
``litert``        .tflite        LiteRT interpreter (XNNPACK: ARM CPUs; Edge TPU delegates),
                                 from ``cobot-hybrid export MODEL.onnx --format litert``
``ultralytics``   .pt            a checkpoint through PyTorch (development)
``auto``          any            the fastest of those that run the file, measured here
================  =============  ===========================================================

A backend asked for by name that cannot run raises :class:`BackendUnavailableError` with the
reason. ``auto`` times every candidate that loads and keeps the fastest; the choice is cached
per model, precision, threads and machine (:mod:`.auto_choice`), and the reason says what was
measured, when, and why others were passed over. A backend's ``precision`` is what it really
runs (an INT8 QDQ model on a CPU backend is ``int8``; fp16 asked on a CPU runs ``fp32``, and the
reason says so); INT8 asked where it would silently run FP32 is refused with what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cobot_hybrid_perception.backends import auto_choice
from cobot_hybrid_perception.backends.base import BackendOptions, InferenceBackend, model_hash
from cobot_hybrid_perception.errors import BackendUnavailableError, ModelLoadError

__all__ = ['BACKENDS', 'BackendChoice', 'BackendOptions', 'InferenceBackend', 'create_backend',
           'model_hash', 'select_backend']

BACKENDS = ('auto', 'tensorrt', 'ort-tensorrt', 'ort-cuda', 'ort-cpu', 'openvino', 'litert',
            'ultralytics')
#: The backends that can run each model file type (auto measures those that load).
_AUTO_ORDER = {'.onnx': ('tensorrt', 'ort-tensorrt', 'ort-cuda', 'ort-cpu', 'openvino'),
               '.engine': ('tensorrt',), '.tflite': ('litert',), '.pt': ('ultralytics',)}
_SUFFIXES = ', '.join(_AUTO_ORDER)


@dataclass
class BackendChoice:
    """The backend in use and why it was chosen."""

    backend: InferenceBackend
    reason: str


def create_backend(name: str, model: Path, options: BackendOptions) -> InferenceBackend:
    """Build the named backend for ``model`` (raises when it cannot run here)."""
    suffix = model.suffix.lower()
    if name not in BACKENDS or name == 'auto':
        raise BackendUnavailableError(f'unknown backend {name!r}; use one of {BACKENDS}')
    if suffix not in _AUTO_ORDER:
        raise ModelLoadError(f'model {model}: unsupported file type {suffix!r} (use '
                             f'{_SUFFIXES})')
    if name not in _AUTO_ORDER[suffix]:
        raise BackendUnavailableError(f'backend {name} cannot run a {suffix} model; it runs '
                                      f'with {", ".join(_AUTO_ORDER[suffix])}')
    if name == 'tensorrt':
        from cobot_hybrid_perception.backends.tensorrt_backend import TensorRTBackend
        return TensorRTBackend(model, options)
    if name == 'ultralytics':
        from cobot_hybrid_perception.backends.ultralytics_backend import UltralyticsBackend
        return UltralyticsBackend(model, options)
    if name == 'openvino':
        from cobot_hybrid_perception.backends.openvino_backend import OpenVinoBackend
        return OpenVinoBackend(model, options)
    if name == 'litert':
        from cobot_hybrid_perception.backends.litert_backend import LiteRtBackend
        return LiteRtBackend(model, options)
    from cobot_hybrid_perception.backends.onnxruntime_backend import OnnxRuntimeBackend
    return OnnxRuntimeBackend(model, name.removeprefix('ort-'), options)


def select_backend(name: str, model: Path, options: BackendOptions) -> BackendChoice:
    """Build ``name``, or for ``auto`` the fastest measured here (cached); say why."""
    if not model.is_file():
        raise ModelLoadError(f'model file {model} does not exist; run `make setup` for the '
                             f'default model or give a path to a model file ({_SUFFIXES})')
    if name != 'auto':
        backend = create_backend(name, model, options)
        return BackendChoice(backend, f'{name} asked for by name'
                             + _precision_note(backend, options.precision))
    order = _AUTO_ORDER.get(model.suffix.lower())
    if order is None:
        raise ModelLoadError(f'model {model}: unsupported file type (use {_SUFFIXES})')
    fingerprint = auto_choice.hardware_fingerprint()
    key = auto_choice.choice_key(model_hash(model), order, options.precision, options.threads,
                                 f'cuda:{options.device} openvino:{options.openvino_device}',
                                 fingerprint)
    cache = auto_choice.ChoiceCache(options.cache_dir / auto_choice.CACHE_NAME)
    backend, reason = auto_choice.choose(
        order, lambda candidate: create_backend(candidate, model, options), key, cache,
        fingerprint)
    return BackendChoice(backend, reason + _precision_note(backend, options.precision))


def _precision_note(backend: InferenceBackend, asked: str) -> str:
    """Where the backend runs another precision than asked for, say which and why."""
    if backend.precision == asked:
        return ''
    if backend.precision == 'int8':
        why = 'the model is INT8 (QDQ)'
    elif asked == 'fp16':
        why = f'{backend.name} has no fp16 path on this device'
    else:
        why = f'{backend.name} runs it so'
    return f'; runs {backend.precision}, not the {asked} asked for ({why})'
