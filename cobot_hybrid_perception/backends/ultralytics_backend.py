"""Ultralytics backend: run a ``.pt`` checkpoint through PyTorch (development path).

Only the network's forward pass runs here; letterboxing, decoding and NMS are ours, exactly
as for the ONNX and TensorRT backends, so the three agree by construction. PyTorch runs on
the CPU unless ``device`` names a CUDA device that torch can see. Exporting ``.pt`` to ONNX
or a TensorRT engine lives in :mod:`cobot_hybrid_perception.models`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy.typing as npt

from cobot_hybrid_perception.backends.base import BackendOptions, model_hash
from cobot_hybrid_perception.errors import BackendUnavailableError, ModelLoadError

__all__ = ['UltralyticsBackend', 'offline_ultralytics_env']


def offline_ultralytics_env(cache_dir: Path) -> None:
    """Keep Ultralytics offline: no update checks, no pip installs, settings in our cache."""
    os.environ['YOLO_OFFLINE'] = '1'
    os.environ['YOLO_AUTOINSTALL'] = 'False'
    os.environ.setdefault('YOLO_CONFIG_DIR', str(cache_dir / 'ultralytics'))


class UltralyticsBackend:
    """A YOLO ``.pt`` checkpoint's torch module."""

    def __init__(self, model: Path, options: BackendOptions) -> None:
        if not model.is_file():
            raise ModelLoadError(f'model file {model} does not exist')
        offline_ultralytics_env(options.cache_dir)
        try:
            import torch
            from ultralytics import YOLO
        except ImportError as exc:
            raise BackendUnavailableError(f'the ultralytics backend needs ultralytics and '
                                          f'torch: {exc}') from None
        try:
            yolo = YOLO(str(model))
        except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds
            raise ModelLoadError(f'Ultralytics cannot load {model}: {exc}') from None
        use_cuda = options.device >= 0 and torch.cuda.is_available()
        self._torch = torch
        self._device = torch.device(f'cuda:{options.device}' if use_cuda else 'cpu')
        self._module = yolo.model.to(self._device).eval()
        if hasattr(self._module, 'fuse'):
            self._module = self._module.fuse(verbose=False)
        if options.threads > 0 and not use_cuda:
            torch.set_num_threads(options.threads)
        self.name = 'ultralytics-cuda' if use_cuda else 'ultralytics-cpu'
        self.precision = 'fp32'
        self.input_shape = (1, 3, options.imgsz[0], options.imgsz[1])
        self.model_hash = model_hash(model)
        names = {int(k): str(v) for k, v in dict(yolo.names).items()}
        kpt_shape = getattr(self._module, 'kpt_shape', None) or \
            getattr(self._module, 'yaml', {}).get('kpt_shape')
        stride = int(max(getattr(self._module, 'stride', [32])))
        meta: dict[str, str] = {'names': repr(names), 'task': str(yolo.task),
                                'stride': str(stride), 'end2end': 'False'}
        if kpt_shape:
            meta['kpt_shape'] = repr(list(kpt_shape))
        self.metadata: Mapping[str, str] = meta

    def infer(self, tensor: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """Forward pass; the first output is the decoded-head tensor (as in ONNX)."""
        with self._torch.inference_mode():
            x = self._torch.from_numpy(tensor).to(self._device)
            out = self._module(x)
        first = out[0] if isinstance(out, (list, tuple)) else out
        return [first.float().cpu().numpy()]

    def close(self) -> None:
        """Drop the module (and its CUDA memory)."""
        self._module = None
