"""LiteRT models: ONNX -> ``.tflite`` in the export environment, and the metadata sidecar.

onnx2tf needs TensorFlow (2.4 GB), so the conversion runs in a separate virtual environment,
``build/litert-export`` (``make litert-model`` creates it; ``$COBOT_HYBRID_LITERT_PYTHON``
names another interpreter), through :mod:`cobot_hybrid_perception.litert_export` run as a
script. The robot's environment needs only the ``ai-edge-litert`` interpreter.

onnx2tf drops the ONNX custom metadata (class names, task, keypoint layout), so the export
writes it beside the model as ``<model>.json`` (the sidecar) together with the ONNX output
shapes, which tell the backend how onnx2tf transposed the outputs. The sidecar is read within
:data:`SIDECAR_LIMITS` (size, depth, digits, finite numbers, string length) and checked field
by field; a missing one means "no metadata", as for a bare ONNX.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.errors import BackendUnavailableError, ModelLoadError, PerceptionError
from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.limits import Limits, read_json_file, refusal

__all__ = ['SIDECAR_FORMAT', 'Sidecar', 'calibration_array', 'export_litert',
           'export_python', 'read_sidecar', 'sidecar_path']

SIDECAR_FORMAT = 'cobot_hybrid.litert-sidecar/1'
SIDECAR_MAX_BYTES = 256 * 1024
#: The sidecar: a few kB of metadata strings and a handful of output shapes.
SIDECAR_LIMITS = Limits(max_bytes=SIDECAR_MAX_BYTES, max_depth=8, max_string=64 * 1024,
                        max_items=1000, max_values=20_000)
MAX_OUTPUTS = 16               # ONNX outputs of one model
MAX_DIMS = 8                   # dimensions of one output
MAX_DIM = 1 << 31              # size of one dimension
_SCRIPT = Path(__file__).with_name('litert_export.py')
_EXPORT_VENV = Path(__file__).resolve().parents[1] / 'build' / 'litert-export'
_CONVERT_TIMEOUT_S = 900


def sidecar_path(model: Path) -> Path:
    """``yolo11n-pose-320.tflite`` -> ``yolo11n-pose-320.json``."""
    return model.with_suffix('.json')


class Sidecar:
    """The ONNX facts a ``.tflite`` lost: custom metadata and the ONNX output shapes."""

    def __init__(self, metadata: dict[str, str], onnx_outputs: list[list[int]]) -> None:
        self.metadata = metadata
        self.onnx_outputs = onnx_outputs


def read_sidecar(model: Path) -> Sidecar | None:
    """Read the sidecar of ``model``: None when there is none, ModelLoadError when bad."""
    path = sidecar_path(model)
    try:
        doc = read_json_file(path, SIDECAR_LIMITS, 'the file')
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelLoadError(f'metadata sidecar {path} cannot be read: {exc.strerror}') from None
    except PayloadError as exc:
        raise ModelLoadError(f'metadata sidecar {path} {refusal(exc, SIDECAR_LIMITS)}; re-export '
                             'with `cobot-hybrid export MODEL.onnx --format litert`') from None
    if not isinstance(doc, dict) or doc.get('format') != SIDECAR_FORMAT:
        raise ModelLoadError(f'metadata sidecar {path} is not a {SIDECAR_FORMAT} document')
    metadata, outputs = doc.get('metadata'), doc.get('onnx_outputs', [])
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ModelLoadError(f'metadata sidecar {path}: "metadata" must map strings to strings')
    if not isinstance(outputs, list) or len(outputs) > MAX_OUTPUTS or not all(
            isinstance(s, list) and 0 < len(s) <= MAX_DIMS
            and all(isinstance(d, int) and not isinstance(d, bool) for d in s)
            for s in outputs):
        raise ModelLoadError(f'metadata sidecar {path}: "onnx_outputs" must be lists of ints '
                             f'(at most {MAX_OUTPUTS} of at most {MAX_DIMS})')
    bad = next((s for s in outputs if not all(1 <= d <= MAX_DIM for d in s)), None)
    if bad is not None:
        raise ModelLoadError(f'metadata sidecar {path}: "onnx_outputs" shape {bad} has a '
                             f'dimension outside 1 to {MAX_DIM}')
    return Sidecar(metadata, outputs)


def write_sidecar(model: Path, source: Path, metadata: dict[str, str],
                  onnx_outputs: list[list[int]], tflite_shapes: dict[str, Any]) -> Path:
    """Write the sidecar of ``model`` atomically."""
    path = sidecar_path(model)
    doc = {'format': SIDECAR_FORMAT, 'source': source.name, 'metadata': metadata,
           'onnx_outputs': onnx_outputs, 'tflite': tflite_shapes}
    staged = path.with_name(path.name + '.part')
    staged.write_text(json.dumps(doc, indent=1) + '\n', encoding='utf-8')
    os.replace(staged, path)
    return path


def export_python() -> Path:
    """Find the export environment's Python (BackendUnavailableError naming the fix)."""
    explicit = os.environ.get('COBOT_HYBRID_LITERT_PYTHON')
    python = Path(explicit) if explicit else _EXPORT_VENV / 'bin' / 'python'
    if not python.is_file():
        raise BackendUnavailableError(
            f'the LiteRT export environment is missing ({python}): run `make litert-model` '
            '(a venv with TensorFlow + onnx2tf under build/litert-export, ~2.4 GB), or set '
            'COBOT_HYBRID_LITERT_PYTHON to a Python that has tensorflow-cpu and onnx2tf')
    return python


def calibration_array(count: int = 20, size: int = 128, seed: int = 0
                      ) -> npt.NDArray[np.float32]:
    """``count`` RGB crops of the sample photos, ``size`` square, float32 in 0..1 (NHWC).

    onnx2tf checks its conversion on such an array and downloads one unless it is given.
    """
    import cv2

    from cobot_hybrid_perception.media import SAMPLE_PHOTOS, load_image, sample_photo_path

    photos = []
    for name in sorted(SAMPLE_PHOTOS):
        try:
            photos.append(load_image(sample_photo_path(name), 'rgb8'))
        except PerceptionError:
            continue   # its package is not installed: the others will do
    if not photos:
        raise ModelLoadError('no sample photo is installed to make the calibration array; '
                             'run `make setup`')
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.float32)
    for i in range(count):
        image = photos[i % len(photos)]
        h, w = image.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = cv2.resize(image[y:y + side, x:x + side], (size, size),
                          interpolation=cv2.INTER_AREA)
        out[i] = crop.astype(np.float32) / 255.0
    return out


def export_litert(onnx_path: Path, output: Path | None = None) -> tuple[Path, Path]:
    """Convert ``onnx_path`` to ``output`` (default: beside it, ``.tflite``) plus its sidecar."""
    from cobot_hybrid_perception.backends.onnx_facts import onnx_facts

    if onnx_path.suffix.lower() != '.onnx' or not onnx_path.is_file():
        raise ModelLoadError(f'LiteRT export needs a .onnx model; {onnx_path} is not one')
    facts = onnx_facts(onnx_path)
    if any(d is None for shape in facts.outputs for d in shape):
        raise ModelLoadError(f'{onnx_path} has dynamic output shapes; export it at a fixed '
                             'size (cobot-hybrid export MODEL.pt --imgsz N)')
    python = export_python()
    output = (output or onnx_path.with_suffix('.tflite')).resolve()
    with tempfile.TemporaryDirectory(prefix='cobot-litert-') as tmp:
        calib = Path(tmp) / 'calib.npy'
        np.save(calib, calibration_array())
        try:
            result = subprocess.run(
                [str(python), '-I', str(_SCRIPT), str(onnx_path.resolve()), str(output),
                 '--calib', str(calib)], capture_output=True, text=True,
                timeout=_CONVERT_TIMEOUT_S, check=False, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise ModelLoadError(f'onnx2tf took over {_CONVERT_TIMEOUT_S} s on {onnx_path}'
                                 ) from None
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        tail = '\n'.join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ModelLoadError(f'onnx2tf failed on {onnx_path} (exit {result.returncode}):\n'
                             f'{tail}')
    try:
        shapes = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise ModelLoadError(f'the LiteRT export printed no summary: {lines[-1][:200]}'
                             ) from None
    onnx_outputs = [[int(d) for d in shape if d is not None] for shape in facts.outputs]
    tflite_shapes = {'inputs': shapes.get('inputs'), 'outputs': shapes.get('outputs')}
    sidecar = write_sidecar(output, onnx_path, dict(facts.metadata), onnx_outputs,
                            tflite_shapes)
    return output, sidecar
