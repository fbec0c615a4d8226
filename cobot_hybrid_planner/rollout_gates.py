"""The gates of a rollout step: the canaries' own edge metrics against the champion's. Pure.

Each robot sends a summary of what its running model did every period
(:class:`~cobot_hybrid_protocol.model_update.ModelMetrics`, tagged with the model's sha256);
the controller adds the protective stops it saw from the robot in that time. :func:`judge`
compares the windows of the canary robots (running the candidate) with those of the other
robots (running the champion) over the same span:

* **no data never passes**: fewer than ``min_frames`` frames on either side, a canary with
  fewer than ``min_windows`` windows, or no champion robot with that many, is
  ``inconclusive`` (the controller waits, and pauses the rollout after the step's timeout),
  the complaint every canary tool gets ("no values found") turned into a state of its own;
* every figure is the **median robot** of its side (each robot's own median p99 and its
  rates over its frames), so each robot counts once however often it reports, and every
  canary must have sent ``min_windows`` windows: one chatty robot cannot pass or fail a step;
  a champion robot with fewer (gone away, or just back) is left out of the champion median;
* ``latency_p99``: the canary median p99 at most ``max_latency_ratio`` times the champion's
  (and at most ``max_latency_ms`` when set);
* ``error_rate``: inference errors per frame at most the champion's plus
  ``max_error_rate_increase``;
* ``detection_rate``: mean detections per frame within ``max_detection_drift`` (relative) of
  the champion's: a model that suddenly sees nobody, or people everywhere, is wrong;
* ``safety_stops``: protective stops per 1,000 frames at most the champion's plus
  ``max_stop_rate_increase``.

Each gate gives its measured values, so the operator sees why a step passed or failed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cobot_hybrid_planner.errors import PlannerError

__all__ = ['GateConfig', 'GateError', 'Verdict', 'Window', 'judge', 'judge_alone']


class GateError(PlannerError, ValueError):
    """A gate threshold that cannot judge anything (negative, NaN, zero windows...)."""


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

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            low = 1 if name in ('min_frames', 'min_windows') else 0
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < low:
                raise GateError(f'gate setting {name} = {value!r} must be a finite number '
                                f'of at least {low}')
        if self.max_latency_ratio <= 0:
            raise GateError('gate setting max_latency_ratio must be above 0')

    def to_json(self) -> dict[str, Any]:
        """Return the thresholds as JSON (stored with the rollout)."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Verdict:
    """``pass``, ``fail`` or ``inconclusive``, why, and the measured values."""

    outcome: str
    reason: str
    values: dict[str, float] = field(default_factory=dict)


def _robot(windows: Sequence[Window]) -> dict[str, float]:
    """Return one robot's figures over its windows (median p99; rates over its frames)."""
    frames = sum(w.frames for w in windows)
    return {'p99_ms': statistics.median([w.latency_p99_ms for w in windows if w.frames]
                                        or [0.0]),
            'error_rate': sum(w.errors for w in windows) / frames if frames else 0.0,
            'detections_mean': sum(w.detections_mean * w.frames for w in windows) / frames
            if frames else 0.0,
            'stops_per_1000': 1000.0 * sum(w.stops for w in windows) / frames if frames
            else 0.0}


def _side(windows: Sequence[Window]) -> tuple[dict[str, float], dict[str, int]]:
    """Return the median robot of a side (each robot counts once, however often it reports)."""
    by_robot: dict[str, list[Window]] = {}
    for window in windows:
        if window.frames:
            by_robot.setdefault(window.robot_id, []).append(window)
    robots = [_robot(ws) for ws in by_robot.values()]
    side = {'robots': float(len(robots)), 'windows': float(len(windows)),
            'frames': float(sum(w.frames for w in windows))}
    for key in ('p99_ms', 'error_rate', 'detections_mean', 'stops_per_1000'):
        side[key] = statistics.median([r[key] for r in robots] or [0.0])
    side['median_p99_ms'] = side['p99_ms']
    return side, {robot: len(ws) for robot, ws in by_robot.items()}


def _settled(windows: Sequence[Window], cfg: GateConfig) -> list[Window]:
    """Keep the windows of the robots that sent at least ``min_windows`` of them.

    The champion side is the reference: a robot that went away, or has just come back, is
    left out of its median rather than holding the step (the canaries, who are judged, must
    each report). With no robot settled the side keeps all its windows, and
    :func:`_enough` then says why it is not enough.
    """
    counts: dict[str, int] = {}
    for window in windows:
        if window.frames:
            counts[window.robot_id] = counts.get(window.robot_id, 0) + 1
    kept = [w for w in windows if counts.get(w.robot_id, 0) >= cfg.min_windows]
    return kept or list(windows)


def _enough(name: str, side: dict[str, float], counts: dict[str, int],
            required: Sequence[str], cfg: GateConfig) -> str:
    """Say why a side has too little data ('' when it has enough)."""
    if side['frames'] < cfg.min_frames:
        return (f'not enough data: the {name} robots sent {side["frames"]:.0f} frames in '
                f'{side["windows"]:.0f} metric windows (need {cfg.min_frames} frames)')
    if not required:
        if not any(n >= cfg.min_windows for n in counts.values()):
            return (f'not enough data: no {name} robot sent {cfg.min_windows} metric windows '
                    f'({sum(counts.values())} windows from {len(counts)} robot(s))')
        return ''
    short = [r for r in required if counts.get(r, 0) < cfg.min_windows]
    if short:
        return (f'not enough data: {len(short)} {name} robot(s) sent fewer than '
                f'{cfg.min_windows} metric windows: {", ".join(sorted(short)[:10])}')
    return ''


def judge_alone(candidate: Sequence[Window], robots: Sequence[str], cfg: GateConfig,
                baseline: Sequence[Window] = ()) -> Verdict:
    """Judge the last step, where no robot runs the champion any more.

    Against ``baseline`` (the champion robots' windows from before the step) with every gate
    of :func:`judge` when it holds enough data; else on absolute limits: errors per frame at
    most ``max_error_rate_increase``, protective stops per 1,000 frames at most
    ``max_stop_rate_increase``, and ``max_latency_ms`` when set. ``inconclusive`` without
    data from every robot.
    """
    c, counts = _side(candidate)
    missing = _enough('candidate', c, counts, robots, cfg)
    if missing:
        return Verdict('inconclusive', missing,
                       {f'candidate_{k}': round(v, 4) for k, v in c.items()})
    b, b_counts = _side(_settled(baseline, cfg))
    if not _enough('champion', b, b_counts, (), cfg):
        verdict = judge(candidate, baseline, cfg, robots)
        return Verdict(verdict.outcome, verdict.reason.replace(
            'the champion', 'the champion before this step'), verdict.values)
    values = {f'candidate_{k}': round(v, 4) for k, v in c.items()}
    if cfg.max_latency_ms and c['p99_ms'] > cfg.max_latency_ms:
        return Verdict('fail', f'latency_p99: the median robot p99 {c["p99_ms"]:.1f} ms > '
                       f'{cfg.max_latency_ms:g} ms', values)
    if c['error_rate'] > cfg.max_error_rate_increase:
        return Verdict('fail', f'error_rate: {c["error_rate"]:.4f} errors per frame > '
                       f'{cfg.max_error_rate_increase:g} (no champion baseline)', values)
    if c['stops_per_1000'] > cfg.max_stop_rate_increase:
        return Verdict('fail', f'safety_stops: {c["stops_per_1000"]:.1f} protective stops per '
                       f'1,000 frames > {cfg.max_stop_rate_increase:g} (no champion '
                       'baseline)', values)
    return Verdict('pass', f'{c["frames"]:.0f} frames from all {len(robots)} robots on the '
                   'candidate, within the absolute limits (no champion baseline)', values)


def judge(canary: Sequence[Window], champion: Sequence[Window], cfg: GateConfig,
          canaries: Sequence[str] = ()) -> Verdict:
    """Judge a step; ``inconclusive`` unless both sides have enough data.

    Each robot counts once (the median robot of each side), and every robot of
    ``canaries`` must have sent ``min_windows`` windows: one chatty robot cannot pass or
    fail a step alone.
    """
    (c, c_counts), (b, b_counts) = _side(canary), _side(_settled(champion, cfg))
    values = {f'canary_{k}': round(v, 4) for k, v in c.items()} | \
        {f'champion_{k}': round(v, 4) for k, v in b.items()}
    for name, side, counts, required in (('canary', c, c_counts, canaries),
                                         ('champion', b, b_counts, ())):
        missing = _enough(name, side, counts, required, cfg)
        if missing:
            return Verdict('inconclusive', missing, values)
    reference = max(b['detections_mean'], 0.1)
    drift = abs(c['detections_mean'] - b['detections_mean']) / reference
    values['detection_drift'] = round(drift, 4)
    if drift > cfg.max_detection_drift:
        return Verdict('fail', f'detection_rate: the canary sees {c["detections_mean"]:.2f} '
                       f'detections per frame, the champion {b["detections_mean"]:.2f} '
                       f'(drift {drift:.0%} > {cfg.max_detection_drift:.0%})', values)
    if c['error_rate'] > b['error_rate'] + cfg.max_error_rate_increase:
        return Verdict('fail', f'error_rate: the canary {c["error_rate"]:.4f} errors per frame '
                       f'> the champion {b["error_rate"]:.4f} + '
                       f'{cfg.max_error_rate_increase:g}', values)
    if c['stops_per_1000'] > b['stops_per_1000'] + cfg.max_stop_rate_increase:
        return Verdict('fail', f'safety_stops: the canary {c["stops_per_1000"]:.1f} '
                       f'protective stops per 1,000 frames > the champion '
                       f'{b["stops_per_1000"]:.1f} + {cfg.max_stop_rate_increase:g}', values)
    limit = cfg.max_latency_ratio * b['median_p99_ms']
    if cfg.max_latency_ms:
        limit = min(limit, cfg.max_latency_ms) if b['median_p99_ms'] else cfg.max_latency_ms
    if c['median_p99_ms'] > limit:
        return Verdict('fail', f'latency_p99: the canary median p99 {c["median_p99_ms"]:.1f} '
                       f'ms > {limit:.1f} ms ({cfg.max_latency_ratio:g} x the champion median '
                       f'{b["median_p99_ms"]:.1f} ms)', values)
    return Verdict('pass', f'every gate passed on {c["frames"]:.0f} canary and '
                   f'{b["frames"]:.0f} champion frames', values)
