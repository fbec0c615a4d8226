"""Inference backends behind one interface, and the choice among them.

========================  ===============================================================
``backend``               runs
========================  ===============================================================
``tensorrt``              native TensorRT engine (``.onnx`` built and cached, or ``.engine``)
``ort-tensorrt``          ONNX Runtime, TensorRT execution provider (its own engine cache)
``ort-cuda``              ONNX Runtime, CUDA execution provider
``ort-cpu``               ONNX Runtime on the CPU (vendor-neutral, runs anywhere)
``ultralytics``           a ``.pt`` checkpoint through PyTorch (development)
``auto``                  the fastest of the above that can run this model here
========================  ===============================================================

A backend asked for by name that cannot run raises :class:`BackendUnavailableError` with the
reason; ``auto`` reports what it picked and why it passed over the faster ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cobot_hybrid_perception.backends.base import BackendOptions, InferenceBackend, model_hash
from cobot_hybrid_perception.errors import BackendUnavailableError, ModelLoadError

__all__ = ['BACKENDS', 'BackendChoice', 'BackendOptions', 'InferenceBackend', 'create_backend',
           'model_hash', 'select_backend']

BACKENDS = ('auto', 'tensorrt', 'ort-tensorrt', 'ort-cuda', 'ort-cpu', 'ultralytics')
_AUTO_ORDER = {'.onnx': ('tensorrt', 'ort-tensorrt', 'ort-cuda', 'ort-cpu'),
               '.engine': ('tensorrt',), '.pt': ('ultralytics',)}


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
        raise ModelLoadError(f'model {model}: unsupported file type {suffix!r} (use .onnx, '
                             '.engine or .pt)')
    if name not in _AUTO_ORDER[suffix]:
        raise BackendUnavailableError(f'backend {name} cannot run a {suffix} model; it runs '
                                      f'with {", ".join(_AUTO_ORDER[suffix])}')
    if name == 'tensorrt':
        from cobot_hybrid_perception.backends.tensorrt_backend import TensorRTBackend
        return TensorRTBackend(model, options)
    if name == 'ultralytics':
        from cobot_hybrid_perception.backends.ultralytics_backend import UltralyticsBackend
        return UltralyticsBackend(model, options)
    from cobot_hybrid_perception.backends.onnxruntime_backend import OnnxRuntimeBackend
    return OnnxRuntimeBackend(model, name.removeprefix('ort-'), options)


def select_backend(name: str, model: Path, options: BackendOptions) -> BackendChoice:
    """``auto``: try the fastest first and say why others were passed over; else build ``name``."""
    if not model.is_file():
        raise ModelLoadError(f'model file {model} does not exist; run `make setup` for the '
                             'default model or give a path to a .onnx, .engine or .pt')
    if name != 'auto':
        return BackendChoice(create_backend(name, model, options), f'{name} asked for by name')
    order = _AUTO_ORDER.get(model.suffix.lower())
    if order is None:
        raise ModelLoadError(f'model {model}: unsupported file type (use .onnx, .engine, .pt)')
    skipped: list[str] = []
    for candidate in order:
        try:
            backend = create_backend(candidate, model, options)
        except BackendUnavailableError as exc:
            skipped.append(f'{candidate}: {exc}')
            continue
        reason = f'auto picked {candidate}'
        if skipped:
            reason += ' (passed over ' + '; '.join(skipped) + ')'
        return BackendChoice(backend, reason)
    raise BackendUnavailableError('no backend can run ' + str(model) + ': ' + '; '.join(skipped))
