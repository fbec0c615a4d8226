"""Per-frame detector pipeline vs raw inference vs Ultralytics predict(), same model and image.

For each input size (320, 640), on the same ONNX model (the default YOLO11n-pose export) and
the same real photo (Ultralytics' bus.jpg, 810x1080):

* raw: ``session.run`` of ONNX Runtime on an already preprocessed tensor (the floor);
* ours: the whole per-frame path of ``detector_node`` from a raw image buffer (as it arrives in
  a ``sensor_msgs/Image``: zero-copy view, letterbox, IO-bound inference, decode + NMS);
* Ultralytics ``YOLO(model.onnx).predict(image)`` (its own pre- and post-processing).

Targets: ours <= 1.05x raw, and faster than predict(). Run with ``--backend`` to use another
ONNX Runtime provider. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable

import numpy as np

from cobot_hybrid_perception.detector import Detector, DetectorConfig
from cobot_hybrid_perception.media import load_image, sample_photo_path
from cobot_hybrid_ros import image_codec


def _measure(fn: Callable[[], object], runs: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(1e3 * (time.perf_counter() - start))
    return samples


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ultralytics_predictor(model_path: str) -> Callable[[np.ndarray], object] | None:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a torchvision that does not match torch
        # PyPI's torchvision cannot load beside the CPU torch of this machine; give
        # Ultralytics its own torch NMS (which it documents as matching torchvision's).
        for name in [m for m in sys.modules if m == 'torchvision' or
                     m.startswith('torchvision.')]:
            del sys.modules[name]
        from ultralytics.utils.nms import TorchNMS

        stub = types.ModuleType('torchvision')
        stub.ops = types.SimpleNamespace(nms=TorchNMS.nms)  # type: ignore[attr-defined]
        sys.modules['torchvision'] = stub
    try:
        from ultralytics import YOLO
    except ImportError:
        return None
    model = YOLO(model_path, task='pose')

    def predict(image: np.ndarray) -> object:
        with contextlib.redirect_stdout(io.StringIO()):
            return model.predict(image, imgsz=int(model_path.split('-')[-1].split('.')[0]),
                                 verbose=False)
    return predict


VARIANTS = {'raw': 'raw session.run (preprocessed input)',
            'ours': 'ours: image buffer -> detections',
            'ultralytics': 'Ultralytics predict() same ONNX'}


def run_variant(variant: str, imgsz: int, runs: int, backend: str, threads: int
                ) -> list[float]:
    """Time one variant in this process (main() gives each its own process)."""
    image = load_image(sample_photo_path('bus'), 'bgr8')
    buffer = image.tobytes()  # what a sensor_msgs/Image carries
    height, width = image.shape[:2]
    detector = Detector(DetectorConfig(backend=backend, imgsz=imgsz, threads=threads))
    try:
        if variant == 'raw':
            detector.letterbox(image)
            tensor = detector.letterbox.tensor.copy()
            run_plain = getattr(detector.backend, 'run_plain', detector.backend.infer)
            return _measure(lambda: run_plain(tensor), runs)
        if variant == 'overhead':
            view = image_codec.image_view(buffer, height=height, width=width,
                                          encoding='bgr8', step=width * 3)
            stages = [detector.detect(view, 'bgr8')[1] for _ in range(runs + 10)][10:]
            return [t.preprocess_ms + t.postprocess_ms for t in stages]
        if variant == 'ours':
            def ours() -> object:
                view = image_codec.image_view(buffer, height=height, width=width,
                                              encoding='bgr8', step=width * 3)
                return detector.detect(view, 'bgr8')
            return _measure(ours, runs)
        predict = _ultralytics_predictor(str(detector.model_path))
        if predict is None:
            return []
        return _measure(lambda: predict(image), runs)
    finally:
        detector.close()


def main() -> None:
    """Print the table (each variant in its own process, two rounds in opposite orders)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=100)
    parser.add_argument('--backend', default='ort-cpu')
    parser.add_argument('--threads', type=int, default=0)
    parser.add_argument('--rounds', type=int, default=4,
                        help='processes per variant, alternating the order (noise of a shared '
                        'machine averages out)')
    parser.add_argument('--variant', choices=[*VARIANTS, 'overhead'], help=argparse.SUPPRESS)
    parser.add_argument('--imgsz', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.imgsz, args.runs, args.backend,
                                     args.threads)))
        return
    print(f'bus.jpg 810x1080, {args.runs} runs each, backend {args.backend}, threads '
          f'{args.threads or "default"}; each variant in {args.rounds} processes')
    print(f'{"imgsz":>5} {"what":<34} {"p50 ms":>8} {"p99 ms":>8} {"vs raw":>7}')
    for imgsz in (320, 640):
        samples: dict[str, list[float]] = {v: [] for v in [*VARIANTS, 'overhead']}
        for round_index in range(args.rounds):
            order = [*VARIANTS, 'overhead']
            order = order if round_index % 2 == 0 else order[::-1]
            for variant in order:
                out = subprocess.run(
                    [sys.executable, __file__, '--variant', variant, '--imgsz', str(imgsz),
                     '--runs', str(max(1, args.runs // args.rounds)), '--backend', args.backend,
                     '--threads', str(args.threads)],
                    capture_output=True, text=True, check=True)
                samples[variant] += json.loads(out.stdout.strip().splitlines()[-1])
        base = statistics.median(samples['raw'])
        for variant, label in VARIANTS.items():
            if not samples[variant]:
                print(f'{imgsz:>5} {label:<34} not available (ultralytics not installed)')
                continue
            p50 = statistics.median(samples[variant])
            print(f'{imgsz:>5} {label:<34} {p50:>8.2f} {_p(samples[variant], 0.99):>8.2f} '
                  f'{p50 / base:>6.2f}x')
        overhead = statistics.median(samples['overhead'])
        print(f'{imgsz:>5} {"ours: letterbox + decode alone":<34} {overhead:>8.2f} '
              f'{_p(samples["overhead"], 0.99):>8.2f} {overhead / base:>+6.2f}  (of raw p50)')


if __name__ == '__main__':
    main()
