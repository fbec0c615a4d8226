"""After `make setup` installs: one OpenCV in the venv, and whether torchvision loads.

Two conflicts come from Ultralytics' requirements, not from ours:

* it requires ``opencv-python`` (5.x here) while we ask for ``opencv-python-headless<5``
  (5.x has no HOGDescriptor/CascadeClassifier); both write the same ``cv2/`` files, so the
  Makefile uninstalls ``opencv-python`` and reinstalls ours. This script checks the result
  and fails (exit 1) if more or less than the one headless 4.x OpenCV is left.
* on a machine whose only torch is a local CPU wheel (``torch 2.13.0+cpu``) and whose only
  torchvision wheels are CUDA builds, ``import torchvision`` fails (``operator
  torchvision::nms does not exist``: its ``_C.so`` links ``libtorch_cuda.so``). The script
  then tries the matching CPU build (``torchvision==X+cpu``) from the configured indexes and,
  when none is reachable, says so in one line and keeps the CUDA one: Ultralytics reads
  torchvision's version at import (``importlib.metadata``), so without it ``import
  ultralytics`` and the model export fail. Ultralytics' ``predict()`` then fails too (its
  warm-up imports torchvision); ``benchmarks/bench_detector.py`` gives it Ultralytics' own
  NMS instead. Our code never imports torchvision.

``python tools/check_venv.py`` prints one line per check and is what the Makefile runs.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

__all__ = ['opencv_problem', 'opencv_distributions', 'torchvision_import_error',
           'torchvision_mismatch']


def opencv_distributions() -> dict[str, str]:
    """Every installed distribution that provides ``cv2`` (name -> version)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata['Name'] or '').lower()
        if name.startswith('opencv'):
            found[name] = dist.version
    return found


def opencv_problem() -> str | None:
    """Why the venv's OpenCV is not the one headless 4.x that requirements/base.txt asks for."""
    dists = opencv_distributions()
    if list(dists) != ['opencv-python-headless']:
        return f'want only opencv-python-headless<5, found {dists or "none"}'
    code = 'import cv2; print(cv2.__version__, hasattr(cv2, "HOGDescriptor"))'
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if done.returncode != 0:
        return f'import cv2 failed: {done.stderr.strip().splitlines()[-1:]}'
    version, hog = done.stdout.split()
    wanted = dists['opencv-python-headless']
    if not wanted.startswith(version + '.') or not version.startswith('4.') or hog != 'True':
        return f'cv2 {version} (HOG {hog}) is not opencv-python-headless {wanted}'
    return None


def torchvision_import_error() -> str | None:
    """Return the last line ``import torchvision`` raises in a fresh interpreter, or None."""
    done = subprocess.run([sys.executable, '-c', 'import torchvision'],
                          capture_output=True, text=True)
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f'exit status {done.returncode}'


def torchvision_mismatch() -> tuple[str, str] | None:
    """(torch, torchvision) versions when they are a CPU torch beside a CUDA torchvision."""
    try:
        torch = importlib.metadata.version('torch')
        dist = importlib.metadata.distribution('torchvision')
    except importlib.metadata.PackageNotFoundError:
        return None
    # The wheel's metadata says 0.28.0; its version.py says which build (0.28.0+cu130).
    vision = dist.version
    source = Path(str(dist.locate_file('torchvision/version.py')))
    if source.is_file():
        found = re.search(r"^__version__ = '([^']+)'", source.read_text(), re.MULTILINE)
        vision = found.group(1) if found else vision
    if torch.endswith('+cpu') and '+cu' in vision:
        return torch, vision
    return None


def _check_torchvision(constraints: str | None) -> str:
    error = torchvision_import_error()
    if error is None:
        return f'torchvision {importlib.metadata.version("torchvision")} loads'
    mismatch = torchvision_mismatch()
    if mismatch is None:
        return f'torchvision does not load ({error}): not the known CPU/CUDA mismatch, look'
    torch, vision = mismatch
    cpu_build = vision.split('+')[0] + '+cpu'
    command = [sys.executable, '-m', 'pip', 'install', '-q', '--disable-pip-version-check',
               '--no-deps', '--force-reinstall', f'torchvision=={cpu_build}']
    if constraints:
        command += ['-c', constraints]
    if subprocess.run(command, capture_output=True).returncode == 0 and \
            torchvision_import_error() is None:
        return f'torchvision {vision} could not load beside torch {torch}: installed {cpu_build}'
    return (f'torchvision {vision} (CUDA build) cannot load beside torch {torch} and no '
            f'torchvision=={cpu_build} is reachable: kept, Ultralytics export works, its '
            f'predict() does not ({error})')


def main() -> int:
    """Print one line per check; exit 1 if the OpenCV is wrong."""
    constraints = sys.argv[1] if len(sys.argv) > 1 else None
    problem = opencv_problem()
    if problem:
        print(f'check_venv: OpenCV: {problem}')
        return 1
    print(f'check_venv: OpenCV: only opencv-python-headless '
          f'{opencv_distributions()["opencv-python-headless"]}')
    print(f'check_venv: {_check_torchvision(constraints)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
