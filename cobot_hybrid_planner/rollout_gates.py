"""The gates of a rollout step: the canaries' own edge metrics against the champion's. Pure.

Each robot sends a summary of what its running model did every period
(:class:`~cobot_hybrid_protocol.model_update.ModelMetrics`, tagged with the model's sha256);
the controller adds the protective stops it saw from the robot in that time. :func:`judge`
compares the windows of the canary robots (running the candidate) with those of the other
robots (running the champion) over the same span:

* **no data never passes**: fewer than ``min_frames`` frames, or fewer than
  ``min_windows`` windows, on either side is ``inconclusive`` (the controller waits, and
  pauses the rollout after the step's timeout), the complaint every canary tool gets ("no
  values found") turned into a state of its own;
* ``latency_p99``: the canary windows' median p99 at most ``max_latency_ratio`` times the
  champion windows' median p99 (and at most ``max_latency_ms`` when set): the same statistic
  on both sides, so one slow window (a busy moment on one robot) is not a verdict;
* ``error_rate``: inference errors per frame at most the champion's plus
  ``max_error_rate_increase``;
* ``detection_rate``: mean detections per frame within ``max_detection_drift`` (relative) of
  the champion's: a model that suddenly sees nobody, or people everywhere, is wrong;
* ``safety_stops``: protective stops per 1,000 frames at most the champion's plus
  ``max_stop_rate_increase``.

Each gate gives its measured values, so the operator sees why a step passed or failed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ['GateConfig', 'Verdict', 'Window', 'judge']


@dataclass(frozen=True)
class Window:
    """One robot's metrics summary over one period."""

    robot_id: str
    sha256: str
    frames: int
    errors: int
    latency_p99_ms: float
    detections_mean: float
    stops: int = 0
    stamp: float = 0.0


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of every step's gates."""

    min_frames: int = 100
    min_windows: int = 2
    max_latency_ratio: float = 1.5
    max_latency_ms: float = 0.0          # 0: no absolute limit
    max_error_rate_increase: float = 0.01
    max_detection_drift: float = 0.5
    max_stop_rate_increase: float = 5.0  # stops per 1,000 frames

    def to_json(self) -> dict[str, Any]:
        """Return the thresholds as JSON (stored with the rollout)."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Verdict:
    """``pass``, ``fail`` or ``inconclusive``, why, and the measured values."""

    outcome: str
    reason: str
    values: dict[str, float] = field(default_factory=dict)


def _side(windows: Sequence[Window]) -> dict[str, float]:
    frames = sum(w.frames for w in windows)
    return {'windows': float(len(windows)), 'frames': float(frames),
            'p99_ms': max((w.latency_p99_ms for w in windows if w.frames), default=0.0),
            'median_p99_ms': statistics.median([w.latency_p99_ms for w in windows
                                                if w.frames] or [0.0]),
            'error_rate': sum(w.errors for w in windows) / frames if frames else 0.0,
            'detections_mean': sum(w.detections_mean * w.frames for w in windows) / frames
            if frames else 0.0,
            'stops_per_1000': 1000.0 * sum(w.stops for w in windows) / frames if frames
            else 0.0}


def judge(canary: Sequence[Window], champion: Sequence[Window], cfg: GateConfig) -> Verdict:
    """Judge a step; ``inconclusive`` unless both sides have enough data."""
    c, b = _side(canary), _side(champion)
    values = {f'canary_{k}': round(v, 4) for k, v in c.items()} | \
        {f'champion_{k}': round(v, 4) for k, v in b.items()}
    for name, side in (('canary', c), ('champion', b)):
        if side['frames'] < cfg.min_frames or side['windows'] < cfg.min_windows:
            return Verdict('inconclusive', f'not enough data: the {name} robots sent '
                           f'{side["windows"]:.0f} metric windows, {side["frames"]:.0f} frames '
                           f'(need {cfg.min_windows} and {cfg.min_frames})', values)
    limit = cfg.max_latency_ratio * b['median_p99_ms']
    if cfg.max_latency_ms:
        limit = min(limit, cfg.max_latency_ms) if b['median_p99_ms'] else cfg.max_latency_ms
    if c['median_p99_ms'] > limit:
        return Verdict('fail', f'latency_p99: the canary median p99 {c["median_p99_ms"]:.1f} '
                       f'ms > {limit:.1f} ms ({cfg.max_latency_ratio:g} x the champion median '
                       f'{b["median_p99_ms"]:.1f} ms)', values)
    if c['error_rate'] > b['error_rate'] + cfg.max_error_rate_increase:
        return Verdict('fail', f'error_rate: the canary {c["error_rate"]:.4f} errors per frame '
                       f'> the champion {b["error_rate"]:.4f} + '
                       f'{cfg.max_error_rate_increase:g}', values)
    reference = max(b['detections_mean'], 0.1)
    drift = abs(c['detections_mean'] - b['detections_mean']) / reference
    values['detection_drift'] = round(drift, 4)
    if drift > cfg.max_detection_drift:
        return Verdict('fail', f'detection_rate: the canary sees {c["detections_mean"]:.2f} '
                       f'detections per frame, the champion {b["detections_mean"]:.2f} '
                       f'(drift {drift:.0%} > {cfg.max_detection_drift:.0%})', values)
    if c['stops_per_1000'] > b['stops_per_1000'] + cfg.max_stop_rate_increase:
        return Verdict('fail', f'safety_stops: the canary {c["stops_per_1000"]:.1f} '
                       f'protective stops per 1,000 frames > the champion '
                       f'{b["stops_per_1000"]:.1f} + {cfg.max_stop_rate_increase:g}', values)
    return Verdict('pass', f'every gate passed on {c["frames"]:.0f} canary and '
                   f'{b["frames"]:.0f} champion frames', values)
