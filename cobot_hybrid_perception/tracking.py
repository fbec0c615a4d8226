"""Persistent track ids across frames: a ByteTrack-style multi-object tracker. No ROS.

:class:`Tracker` takes each frame's boxes (x1, y1, x2, y2 in pixels), scores and class ids
with the frame's time, and answers one id per detection:

* ``<class>-<n>`` (``person-17``): a confirmed track, seen ``track_confirm_hits`` frames in a
  row; it keeps this id while it is seen, and through gaps up to ``track_buffer_s``;
* ``new-<n>``: a tentative track (seen fewer times); the same ``n`` once it is confirmed, so a
  consumer can link the two;
* ``det-<k>``: a detection the tracker holds no track for (below ``track_new_thresh``, over
  ``track_max_detections`` or ``track_max_tracks``); ``k`` is its index in the frame.

Ids are unique within a frame and ``n`` is never given twice by one tracker (a reset keeps the
counter). Nothing is dropped: every detection gets an id.

Association, per class (a track never takes a detection of another class), as ByteTrack does,
with DeepSORT's preference for the recently seen:

1. detections scoring ``track_high_thresh`` or more against the confirmed tracks seen last
   frame, by IoU with the track's box predicted at constant velocity, at least
   ``track_match_iou``; optimal assignment (``linear_sum_assignment``); then what is left
   against the confirmed tracks lost within ``track_buffer_s``, whose prediction keeps the
   last size (an occlusion shrinks a box from one side: extrapolating that would shrink the
   prediction to nothing) and which also match at their last box (people stop behind things);
   matching lost tracks second keeps two people leaving at the same image border apart;
2. detections from ``track_low_thresh`` up to ``track_high_thresh`` against the confirmed
   tracks seen last frame and still unmatched, IoU at least ``track_low_match_iou`` (a person
   half hidden keeps the track alive); tracks unmatched after this become lost;
3. the remaining high-score detections against the tentative tracks (``track_match_iou``); a
   tentative track that misses a frame is discarded;
4. remaining detections scoring ``track_new_thresh`` or more start tentative tracks.

Time is the frame's (the image stamp): velocities are in pixels per second and the buffer is in
seconds, so frames dropped under overload do not shorten it. Hostile input: non-finite or
inverted boxes, non-finite or out-of-range scores and non-finite times raise
:class:`TrackingError` and change nothing; time going backwards (a bag replayed, a camera
restarted) resets the tracks, counted in :attr:`TrackerStats.time_resets`, and new tracks get
new ids; at most ``track_max_detections`` detections per frame (the best scores) are
associated and at most ``track_max_tracks`` tracks are alive, the rest counted and left
``det-<k>``.

:func:`match_truth` and :func:`count_id_switches` measure a tracker against ground truth
(CLEAR MOT identity switches), for the tests and ``benchmarks/bench_tracking.py``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from cobot_hybrid_perception.errors import ConfigError, PerceptionError
from cobot_hybrid_perception.yolo_decode import Detections
from cobot_hybrid_protocol.settings import check_settings, setting

__all__ = ['TrackerConfig', 'Tracker', 'TrackerStats', 'TrackAssignment', 'TrackingError',
           'box_iou', 'count_id_switches', 'decode_conf', 'match_truth', 'track_detections',
           'untracked_ids']

_Array = npt.NDArray[Any]
#: Weight of the newest velocity observation (exponential smoothing of the box velocity).
_VELOCITY_GAIN = 0.5
#: Cost of a pair below its IoU gate: more than any sum of feasible costs in one assignment.
_INFEASIBLE = 1e6


class TrackingError(PerceptionError, ValueError):
    """Boxes, scores or a time handed to the tracker are unusable; nothing was changed."""


@dataclass(frozen=True)
class TrackerConfig:
    """Persistent ids for the detector's output (also the detector node's parameters)."""

    tracking: bool = setting(True, 'persistent track ids in Detection2D.id (<class>-<n>, '
                             'new-<n>, det-<k>); false: the index in the frame', live=True)
    track_high_thresh: float = setting(0.25, 'detections scoring this or more are associated '
                                       'first', low=0.0, high=1.0, live=True)
    track_low_thresh: float = setting(0.1, 'detections from this score up to '
                                      'track_high_thresh only extend tracks (the detector '
                                      'decodes down to it; only those scoring conf or more are '
                                      'published)', low=0.0, high=1.0, live=True)
    track_new_thresh: float = setting(0.4, 'an unmatched detection scoring this or more starts '
                                      'a track', low=0.0, high=1.0, live=True)
    track_match_iou: float = setting(0.2, "least IoU of a high-score detection with a track's "
                                     'predicted box', low=0.01, high=1.0, live=True)
    track_low_match_iou: float = setting(0.5, 'least IoU of a low-score detection with a '
                                         "track's predicted box", low=0.01, high=1.0,
                                         live=True)
    track_confirm_hits: int = setting(2, 'frames in a row a new track is seen before it is '
                                      'confirmed', low=1, high=100, live=True)
    track_buffer_s: float = setting(1.0, 'a track not seen for longer is dropped (its id is '
                                    'never given again)', unit='s', low=0.0, high=60.0,
                                    live=True)
    track_max_detections: int = setting(200, 'most detections per frame the tracker '
                                        'associates (best scores; the rest stay det-<k>)',
                                        low=1, high=1000, live=True)
    track_max_tracks: int = setting(1000, 'most tracks alive (beyond, detections stay '
                                    'det-<k>)', low=1, high=10000, live=True)

    def __post_init__(self) -> None:
        check_settings(self, ConfigError)
        if self.track_low_thresh > self.track_high_thresh:
            raise ConfigError(f'track_low_thresh {self.track_low_thresh} is above '
                              f'track_high_thresh {self.track_high_thresh}: lower it')


@dataclass
class TrackerStats:
    """What the tracker did since it was made (counts only grow)."""

    frames: int = 0
    started: int = 0        # tentative tracks started (ids issued)
    confirmed: int = 0      # tracks that reached track_confirm_hits
    ended: int = 0          # confirmed tracks dropped after track_buffer_s unseen
    discarded: int = 0      # tentative tracks that missed a frame
    time_resets: int = 0    # frames whose time was before the previous frame's
    over_limit: int = 0     # detections beyond track_max_detections, left untracked
    refused_new: int = 0    # tracks not started because track_max_tracks were alive


@dataclass(frozen=True)
class TrackAssignment:
    """One frame's answer: per input detection its id, track number (-1: none), confirmation."""

    ids: tuple[str, ...]
    numbers: _Array      # (N,) int64
    confirmed: _Array    # (N,) bool


def box_iou(a: _Array, b: _Array) -> _Array:
    """IoU of every box in ``a`` (M, 4) with every box in ``b`` (N, 4), xyxy: (M, N)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    iou: _Array = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou


def _to_cxcywh(boxes: _Array) -> _Array:
    return np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2.0, boxes[:, 2:] - boxes[:, :2]],
                          axis=1)


def _to_xyxy(state: _Array) -> _Array:
    half = np.maximum(state[:, 2:], 1.0) / 2.0   # a prediction never shrinks below 1 px
    return np.concatenate([state[:, :2] - half, state[:, :2] + half], axis=1)


def _associate(iou: _Array, same_class: _Array, min_iou: float) -> tuple[_Array, _Array]:
    """Optimal one-to-one pairs (track row, detection row) with IoU >= min_iou, same class."""
    empty = np.zeros(0, np.int64)
    feasible = (iou >= min_iou) & same_class
    if not feasible.any():
        return empty, empty
    rows, cols = linear_sum_assignment(np.where(feasible, 1.0 - iou, _INFEASIBLE))
    keep = feasible[rows, cols]
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


@dataclass
class _Tracks:
    """Every live track, one row each (struct of arrays)."""

    state: _Array = field(default_factory=lambda: np.zeros((0, 4)))      # cx, cy, w, h
    velocity: _Array = field(default_factory=lambda: np.zeros((0, 4)))   # per second
    seen_s: _Array = field(default_factory=lambda: np.zeros(0))
    cls: _Array = field(default_factory=lambda: np.zeros(0, np.int64))
    number: _Array = field(default_factory=lambda: np.zeros(0, np.int64))
    hits: _Array = field(default_factory=lambda: np.zeros(0, np.int64))
    confirmed: _Array = field(default_factory=lambda: np.zeros(0, bool))
    lost: _Array = field(default_factory=lambda: np.zeros(0, bool))   # unseen last frame

    def __len__(self) -> int:
        return int(self.number.shape[0])

    def keep(self, rows: _Array) -> None:
        for name in ('state', 'velocity', 'seen_s', 'cls', 'number', 'hits', 'confirmed',
                     'lost'):
            setattr(self, name, getattr(self, name)[rows])

    def add(self, boxes: _Array, cls: _Array, numbers: _Array, now_s: float,
            confirmed: bool) -> None:
        n = len(numbers)
        self.state = np.concatenate([self.state, _to_cxcywh(boxes)])
        self.velocity = np.concatenate([self.velocity, np.zeros((n, 4))])
        self.seen_s = np.concatenate([self.seen_s, np.full(n, now_s)])
        self.cls = np.concatenate([self.cls, cls])
        self.number = np.concatenate([self.number, numbers])
        self.hits = np.concatenate([self.hits, np.ones(n, np.int64)])
        self.confirmed = np.concatenate([self.confirmed, np.full(n, confirmed)])
        self.lost = np.concatenate([self.lost, np.zeros(n, bool)])


class Tracker:
    """ByteTrack-style association of each frame's detections to persistent tracks."""

    def __init__(self, cfg: TrackerConfig | None = None) -> None:
        self.cfg = cfg or TrackerConfig()
        self.stats = TrackerStats()
        self._tracks = _Tracks()
        self._numbers = itertools.count(1)
        self._last_s: float | None = None

    @property
    def alive(self) -> int:
        """Tracks held now (tentative, seen or lost)."""
        return len(self._tracks)

    @property
    def alive_confirmed(self) -> int:
        """Confirmed tracks held now (seen or lost within the buffer)."""
        return int(self._tracks.confirmed.sum())

    def reset(self) -> None:
        """Forget every track (their ids are not given again) and the last time."""
        self._tracks = _Tracks()
        self._last_s = None

    def update(self, boxes: npt.ArrayLike, scores: npt.ArrayLike, class_ids: npt.ArrayLike,
               now_s: float, names: Sequence[str] = ()) -> TrackAssignment:
        """Associate one frame's detections; ``names`` turn class ids into id prefixes."""
        b, s, c = _checked(boxes, scores, class_ids, now_s)
        cfg, tracks = self.cfg, self._tracks
        if self._last_s is not None and now_s < self._last_s:
            self.reset()
            tracks = self._tracks
            self.stats.time_resets += 1
        self._last_s = now_s
        self.stats.frames += 1
        n = len(s)
        track_of = np.full(n, -1, np.int64)   # row in tracks (after this frame's removals)

        # Forget what has been unseen too long, then predict the rest to now.
        expired = (now_s - tracks.seen_s) > cfg.track_buffer_s
        if expired.any():
            self.stats.ended += int((expired & tracks.confirmed).sum())
            self.stats.discarded += int((expired & ~tracks.confirmed).sum())
            tracks.keep(~expired)
        # A lost track keeps its size (occlusion shrinks boxes; extrapolating that shrinks the
        # prediction to nothing) and is also matched at its last box (people stop behind things).
        gap = now_s - tracks.seen_s
        motion = tracks.velocity * gap[:, None]
        motion[tracks.lost, 2:] = 0.0
        predicted = _to_xyxy(tracks.state + motion)
        last = _to_xyxy(tracks.state)

        # The detections the tracker considers: low threshold and up, the best ones first.
        candidates = np.flatnonzero(s >= cfg.track_low_thresh)
        if len(candidates) > cfg.track_max_detections:
            order = np.argsort(-s[candidates], kind='stable')
            self.stats.over_limit += len(candidates) - cfg.track_max_detections
            candidates = np.sort(candidates[order[:cfg.track_max_detections]])
        high = candidates[s[candidates] >= cfg.track_high_thresh]
        low = candidates[s[candidates] < cfg.track_high_thresh]
        matched_track = np.zeros(len(tracks), bool)
        matched_det = np.zeros(n, bool)

        def match(rows: _Array, dets: _Array, min_iou: float) -> None:
            if not len(rows) or not len(dets):
                return
            iou = box_iou(predicted[rows], b[dets])
            lost = tracks.lost[rows]
            if lost.any():
                iou[lost] = np.maximum(iou[lost], box_iou(last[rows[lost]], b[dets]))
            ti, di = _associate(iou, tracks.cls[rows][:, None] == c[dets][None, :], min_iou)
            ti, di = rows[ti], dets[di]
            track_of[di] = ti
            matched_track[ti] = True
            matched_det[di] = True

        seen_rows = np.flatnonzero(tracks.confirmed & ~tracks.lost)
        lost_rows = np.flatnonzero(tracks.confirmed & tracks.lost)
        match(seen_rows, high, cfg.track_match_iou)                            # stage 1
        match(lost_rows, high[~matched_det[high]], cfg.track_match_iou)
        match(seen_rows[~matched_track[seen_rows]], low, cfg.track_low_match_iou)  # stage 2
        tentative_rows = np.flatnonzero(~tracks.confirmed)
        match(tentative_rows, high[~matched_det[high]], cfg.track_match_iou)   # stage 3

        self._apply_matches(tracks, np.flatnonzero(matched_det), track_of, b, now_s)
        # Confirmed tracks unmatched become lost; tentative ones unmatched are discarded.
        tracks.lost = tracks.lost | (~matched_track & tracks.confirmed)
        discard = ~matched_track & ~tracks.confirmed
        if discard.any():
            self.stats.discarded += int(discard.sum())
            kept_rows = np.flatnonzero(~discard)
            remap = np.full(len(tracks) + 1, -1, np.int64)   # the last entry maps -1 to -1
            remap[kept_rows] = np.arange(len(kept_rows))
            tracks.keep(kept_rows)
            track_of = remap[track_of]

        # Stage 4: new tentative tracks from the unmatched confident detections.
        new = high[~matched_det[high] & (s[high] >= cfg.track_new_thresh)]
        room = max(0, cfg.track_max_tracks - len(tracks))
        if len(new) > room:
            self.stats.refused_new += len(new) - room
            new = new[np.argsort(-s[new], kind='stable')[:room]]
        if len(new):
            numbers = np.array([next(self._numbers) for _ in new], np.int64)
            track_of[new] = len(tracks) + np.arange(len(new))
            tracks.add(b[new], c[new], numbers, now_s, cfg.track_confirm_hits <= 1)
            self.stats.started += len(new)
            if cfg.track_confirm_hits <= 1:
                self.stats.confirmed += len(new)
        return _answer(tracks, track_of, c, names)

    def _apply_matches(self, tracks: _Tracks, dets: _Array, track_of: _Array, boxes: _Array,
                       now_s: float) -> None:
        rows = track_of[dets]
        if not len(rows):
            return
        measured = _to_cxcywh(boxes[dets])
        gap = now_s - tracks.seen_s[rows]
        moved = gap > 1e-6   # the same stamp twice tells nothing about velocity
        observed = np.zeros_like(measured)
        observed[moved] = (measured[moved] - tracks.state[rows][moved]) / gap[moved, None]
        first = (tracks.hits[rows] == 1)[:, None]
        smoothed = np.where(first, observed, (1.0 - _VELOCITY_GAIN) * tracks.velocity[rows]
                            + _VELOCITY_GAIN * observed)
        tracks.velocity[rows] = np.where(moved[:, None], smoothed, tracks.velocity[rows])
        tracks.state[rows] = measured
        tracks.seen_s[rows] = now_s
        tracks.lost[rows] = False
        tracks.hits[rows] += 1
        newly = ~tracks.confirmed[rows] & (tracks.hits[rows] >= self.cfg.track_confirm_hits)
        tracks.confirmed[rows[newly]] = True
        self.stats.confirmed += int(newly.sum())


def _answer(tracks: _Tracks, track_of: _Array, cls: _Array,
            names: Sequence[str]) -> TrackAssignment:
    """Format one frame's answer from the row of each detection's track (-1: none)."""
    has = track_of >= 0
    if len(tracks):
        rows = np.maximum(track_of, 0)
        numbers = np.where(has, tracks.number[rows], -1)
        confirmed = has & tracks.confirmed[rows]
    else:
        numbers, confirmed = np.full(len(track_of), -1, np.int64), np.zeros(len(track_of), bool)
    ids = []
    for k in range(len(track_of)):
        if not has[k]:
            ids.append(f'det-{k}')
        elif confirmed[k]:
            cid = int(cls[k])
            name = names[cid] if 0 <= cid < len(names) else str(cid)
            ids.append(f'{name}-{int(numbers[k])}')
        else:
            ids.append(f'new-{int(numbers[k])}')
    return TrackAssignment(tuple(ids), numbers.astype(np.int64), confirmed.astype(bool))


def _checked(boxes: npt.ArrayLike, scores: npt.ArrayLike, class_ids: npt.ArrayLike,
             now_s: float) -> tuple[_Array, _Array, _Array]:
    """Return the inputs as arrays, or raise TrackingError saying what is wrong."""
    if not isinstance(now_s, (int, float)) or isinstance(now_s, bool) \
            or not math.isfinite(now_s):
        raise TrackingError(f'time {now_s!r} is not a finite number of seconds')
    try:
        b = np.asarray(boxes, np.float64)
        s = np.asarray(scores, np.float64)
        c = np.asarray(class_ids)
    except (TypeError, ValueError) as exc:
        raise TrackingError(f'detections are not numeric arrays: {exc}') from exc
    if b.size == 0 and b.ndim <= 2:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise TrackingError(f'boxes have shape {b.shape}: expected (N, 4) x1, y1, x2, y2')
    if s.shape != (len(b),) or c.shape != (len(b),):
        raise TrackingError(f'{len(b)} boxes, scores of shape {s.shape}, class ids of shape '
                            f'{c.shape}: give one score and one class id per box')
    if c.size and not np.issubdtype(c.dtype, np.integer):
        raise TrackingError(f'class ids of type {c.dtype}: give integers')
    if not np.isfinite(b).all():
        raise TrackingError(f'{int((~np.isfinite(b)).any(axis=1).sum())} box(es) with NaN or '
                            'infinite coordinates')
    if not np.isfinite(s).all() or ((s < 0.0) | (s > 1.0)).any():
        raise TrackingError('scores must be finite and within 0..1')
    if ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
        raise TrackingError('a box has x2 < x1 or y2 < y1: give x1, y1, x2, y2')
    return b, s, c.astype(np.int64)


def decode_conf(conf: float, cfg: TrackerConfig) -> float:
    """Return the score to decode down to: the tracker's low threshold when tracking."""
    return min(conf, cfg.track_low_thresh) if cfg.tracking else conf


def _subset(detections: Detections, rows: _Array) -> Detections:
    kpts = None if detections.keypoints is None else detections.keypoints[rows]
    return Detections(detections.boxes[rows], detections.scores[rows],
                      detections.class_ids[rows], kpts, detections.names)


def untracked_ids(detections: Detections, conf: float,
                  prefix: str = '') -> tuple[Detections, list[str]]:
    """Return the detections scoring ``conf`` or more, each with its index as id."""
    published = _subset(detections, np.flatnonzero(detections.scores >= conf))
    return published, [f'{prefix}{i}' for i in range(len(published))]


def track_detections(tracker: Tracker, detections: Detections, now_s: float,
                     conf: float) -> tuple[Detections, list[str]]:
    """Track one frame; return the detections to publish (scoring ``conf`` or more) and ids.

    The published set is the one without tracking: lower-scoring detections (decoded down to
    :func:`decode_conf`) only feed the tracker's second stage. With ``tracking`` off the ids
    are the index in the frame, as before tracking existed.
    """
    if not tracker.cfg.tracking:
        return untracked_ids(detections, conf)
    answer = tracker.update(detections.boxes, detections.scores, detections.class_ids, now_s,
                            detections.names)
    rows = np.flatnonzero(detections.scores >= conf)
    return _subset(detections, rows), [answer.ids[int(i)] for i in rows]


# --- measuring a tracker against ground truth (tests and benchmarks) ---------------------------

def match_truth(truth: npt.ArrayLike, boxes: npt.ArrayLike,
                min_iou: float = 0.5) -> dict[int, int]:
    """Pair ground-truth boxes with detections one to one (IoU >= min_iou): truth -> detection."""
    t = np.asarray(truth, np.float64).reshape(-1, 4)
    d = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(t) or not len(d):
        return {}
    iou = box_iou(t, d)
    rows, cols = _associate(iou, np.ones_like(iou, bool), min_iou)
    return {int(r): int(k) for r, k in zip(rows, cols, strict=True)}


def count_id_switches(frames: Iterable[Mapping[Hashable, Hashable | None]]) -> int:
    """Identity switches as CLEAR MOT counts them, over frames of ``truth -> identity``.

    A switch is a frame where a ground-truth object's identity differs from the identity it
    last had; ``None`` (matched by nothing, or by a detection without an id) is skipped.
    """
    last: dict[Hashable, Hashable] = {}
    switches = 0
    for frame in frames:
        for truth, identity in frame.items():
            if identity is None:
                continue
            if truth in last and last[truth] != identity:
                switches += 1
            last[truth] = identity
    return switches
