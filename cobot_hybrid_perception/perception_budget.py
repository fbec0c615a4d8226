"""The perception age budget: detector latency + camera period against the monitor's limit.

The limit is the one the safety monitor enforces (``max_perception_age_s``). Pure Python, no
ROS.

The safety monitor stops the robot when its newest detections are older than the limit. Just
before frame *i*'s detections arrive, the newest ones it has are frame *i-1*'s, so their age is
``arrival_i - stamp_(i-1)``: the period between the two frames plus frame *i*'s latency from
capture to arrival. :class:`AgeWindow` keeps that *peak age* per frame (and its two parts);
:func:`assess` compares its p99 with the limit:

* ``OK`` below :data:`WARN_SHARE` of the limit;
* ``WARN`` above it: little margin left, or over the limit for less than
  :data:`ERROR_AFTER_S` in a row;
* ``ERROR`` over the limit for :data:`ERROR_AFTER_S` or more: the robot keeps stopping for stale
  perception, not for people.

The message names the numbers and the fixes: a smaller network input, an INT8 model, a faster
runtime, a camera rate the detector keeps up with, or a larger limit with its ISO/TS 15066 cost
(S_p grows by the human speed times the extra age). The verdict is advice for the operator:
the monitor's own watchdog is what stops the robot on each stale frame.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = ['ERROR_AFTER_S', 'WARN_SHARE', 'AgeWindow', 'BudgetVerdict', 'BudgetWatch', 'assess',
           'limit_problem', 'percentile']

#: Share of the limit above which the budget is a WARN (the margin left is small).
WARN_SHARE = 0.8
#: Over the limit this long in a row: ERROR (shorter: WARN, a start-up or a hiccup).
ERROR_AFTER_S = 3.0
#: Frames in a row whose stamps cannot be measured before the budget says so.
IMPLAUSIBLE_FOR_WARN = 10
#: Frames the windows keep.
WINDOW = 200
#: A latency or period outside 0..this [s] is not a measurement (clocks apart, a paused
#: camera): it is counted, not kept.
PLAUSIBLE_S = 60.0


def percentile(values: Iterable[float], q: float) -> float:
    """Return the ``q`` quantile (0..1, nearest rank) of ``values``; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class AgeWindow:
    """Per-frame latency, period and peak age of the last :data:`WINDOW` frames [s].

    ``add(stamp_s, seen_s)``: a frame captured at ``stamp_s`` reached this stage at ``seen_s``
    (the detector: when it published; the monitor: when it arrived).
    """

    latency: deque[float]
    period: deque[float]
    peak_age: deque[float]
    implausible: int = 0
    implausible_in_a_row: int = 0
    last_seen_s: float = math.nan    # when the last frame (any) was seen
    _last_stamp: float | None = None

    def __init__(self, size: int = WINDOW) -> None:
        self.latency, self.period, self.peak_age = (deque(maxlen=size), deque(maxlen=size),
                                                    deque(maxlen=size))
        self.implausible = 0
        self.implausible_in_a_row = 0
        self.last_seen_s = math.nan
        self._last_stamp = None
        self.recent: deque[bool] = deque(maxlen=size)   # per frame: could it be measured?

    def add(self, stamp_s: float, seen_s: float) -> None:
        """Count one frame (a non-finite, backwards or implausible value is only counted)."""
        if math.isfinite(seen_s):
            self.last_seen_s = seen_s
        self.implausible_in_a_row += 1   # reset below by a frame that is measured
        self.recent.append(False)        # set True below by a frame that is measured
        latency = seen_s - stamp_s
        if not (math.isfinite(stamp_s) and math.isfinite(seen_s)
                and 0.0 <= latency <= PLAUSIBLE_S):
            self.implausible += 1
            return
        last, self._last_stamp = self._last_stamp, stamp_s
        self.latency.append(latency)
        self.implausible_in_a_row = 0
        self.recent[-1] = True
        if last is None:
            return
        period = stamp_s - last
        if not 0.0 < period <= PLAUSIBLE_S:   # the same frame twice, or a camera restart
            self.implausible += 1
            return
        self.period.append(period)
        self.peak_age.append(period + latency)

    def clear(self) -> None:
        """Forget every frame (the detector was reconfigured)."""
        for window in (self.latency, self.period, self.peak_age):
            window.clear()
        self.recent.clear()
        self._last_stamp = None

    def values(self) -> dict[str, float]:
        """p50/p99 of latency and period, p50/p99/max of the peak age [ms] (NaN: no data)."""
        out: dict[str, float] = {}
        for name, window in (('latency', self.latency), ('period', self.period),
                             ('age', self.peak_age)):
            out[f'{name}_ms_p50'] = 1e3 * percentile(window, 0.5)
            out[f'{name}_ms_p99'] = 1e3 * percentile(window, 0.99)
        out['age_ms_max'] = 1e3 * max(self.peak_age) if self.peak_age else math.nan
        return out


@dataclass(frozen=True)
class BudgetVerdict:
    """The budget's level (OK, WARN, ERROR) and why, with the numbers it was judged on."""

    level: str
    message: str
    latency_s: float
    period_s: float
    worst_age_s: float
    limit_s: float


def assess(latency_s: float, period_s: float, limit_s: float, over_for_s: float = 0.0,
           human_speed_mps: float = 1.6, worst_age_s: float | None = None) -> BudgetVerdict:
    """Judge a p99 latency and p99 period [s] against the monitor's age limit.

    ``worst_age_s`` is the measured p99 peak age when known (it is less than latency + period
    when the two peaks do not coincide); ``over_for_s`` is how long the budget has been over
    the limit without a break. ``period_s`` NaN (one frame so far): the latency alone is
    judged. ``human_speed_mps`` prices a larger limit: S_p grows by it times the extra age.
    """
    if not (math.isfinite(limit_s) and limit_s > 0):
        return BudgetVerdict('ERROR', f'no usable age limit ({limit_s} s)', latency_s,
                             period_s, math.nan, limit_s)
    if not math.isfinite(latency_s):
        return BudgetVerdict('OK', 'no frames measured yet', latency_s, period_s, math.nan,
                             limit_s)
    period = period_s if math.isfinite(period_s) else 0.0
    worst = worst_age_s if worst_age_s is not None and math.isfinite(worst_age_s) \
        else latency_s + period
    numbers = (f'latency p99 {1e3 * latency_s:.0f} ms + frame period p99 '
               f'{1e3 * period:.0f} ms: worst perception age {1e3 * worst:.0f} ms')
    limit = f'max_perception_age_s {limit_s:.3f} s'
    if worst <= WARN_SHARE * limit_s:
        return BudgetVerdict('OK', f'{numbers}, within {limit} '
                             f'({100 * worst / limit_s:.0f} %)', latency_s, period_s, worst,
                             limit_s)
    extra = max(0.0, worst - limit_s)
    fixes = [f'a smaller input (imgsz 320) or an INT8 model (cobot-hybrid quantize) for the '
             f'{1e3 * latency_s:.0f} ms latency',
             'a faster runtime (cobot-hybrid bench lists them on this machine)']
    if latency_s > period > 0:
        fixes.append(f'a camera rate the detector keeps up with (at most '
                     f'{1.0 / latency_s:.1f} Hz)')
    elif period > 0:
        fixes.append(f'a higher camera rate (a frame every {1e3 * period:.0f} ms now)')
    raise_to = math.ceil(max(worst, limit_s) / WARN_SHARE * 100.0) / 100.0
    fixes.append(f'max_perception_age_s {raise_to:.2f} s, which makes S_p '
                 f'{human_speed_mps * (raise_to - limit_s):.2f} m larger '
                 f'({human_speed_mps:.1f} m/s human speed times the extra age)')
    advice = 'fix: ' + '; or '.join(fixes)
    if worst <= limit_s:
        return BudgetVerdict('WARN', f'{numbers}, {100 * worst / limit_s:.0f} % of {limit}: '
                             f'little margin; {advice}', latency_s, period_s, worst, limit_s)
    over = (f'{numbers} exceeds {limit} by {1e3 * extra:.0f} ms: the robot stops for stale '
            'perception')
    level = 'ERROR' if over_for_s >= ERROR_AFTER_S else 'WARN'
    return BudgetVerdict(level, f'{over}; {advice}', latency_s, period_s, worst, limit_s)


@dataclass
class BudgetWatch:
    """An :class:`AgeWindow` judged over time: how long the budget has been over the limit.

    ``startup_latency_s`` (a warm-up measurement) is judged until frames are measured.
    """

    window: AgeWindow
    startup_latency_s: float = math.nan
    _over_since_s: float | None = None

    def verdict(self, now_s: float, limit_s: float, human_speed_mps: float = 1.6,
                clock_s: float | None = None) -> BudgetVerdict:
        """Judge the budget now (``now_s`` on any monotonic clock: it times the over-limit run).

        ``clock_s``: now on the clock the frames were seen on; a silence longer than the limit
        since the last frame is then a WARN, then an ERROR, whatever the window says.
        """
        silent = self._silence(limit_s, clock_s)
        if silent is not None:
            return self._over(now_s, silent)
        window = self.window
        unmeasured = window.recent.count(False)
        if unmeasured >= IMPLAUSIBLE_FOR_WARN and unmeasured * 10 >= len(window.recent):
            return self._over(now_s, BudgetVerdict(
                'WARN', f'{unmeasured} of the last {len(window.recent)} frames had stamps that '
                'cannot be measured (stamped 0, in the future, or long ago): the safety monitor '
                'ages detections by the same stamps, so those frames count as stale there',
                math.nan, math.nan, math.nan, limit_s))
        if window.implausible_in_a_row >= IMPLAUSIBLE_FOR_WARN:
            return self._over(now_s, BudgetVerdict(
                'WARN', f'{window.implausible_in_a_row} frames in a row with stamps that cannot '
                'be measured (stamped 0, in the future, or long ago: the camera and this node '
                'disagree on the time, or the camera does not stamp); the safety monitor ages '
                'detections by the same stamps', math.nan, math.nan, math.nan, limit_s))
        values = self.window.values()
        latency = values['latency_ms_p99'] / 1e3
        period = values['period_ms_p99'] / 1e3
        age: float | None = values['age_ms_p99'] / 1e3
        warm_up = not math.isfinite(latency)
        if warm_up:
            latency, age = self.startup_latency_s, None
        first = assess(latency, period, limit_s, 0.0, human_speed_mps, age)
        if warm_up and math.isfinite(latency):
            first = replace(first, message=first.message + ' (the warm-up at configure: no '
                            'frame measured yet)')
        if math.isfinite(first.worst_age_s) and first.worst_age_s > limit_s:
            if self._over_since_s is None:
                self._over_since_s = now_s
        else:
            self._over_since_s = None
        if self._over_since_s is None:
            return first
        return assess(latency, period, limit_s, now_s - self._over_since_s, human_speed_mps,
                      age)

    def _silence(self, limit_s: float, clock_s: float | None) -> BudgetVerdict | None:
        last = self.window.last_seen_s
        if clock_s is None or not math.isfinite(last) or not math.isfinite(clock_s):
            return None
        silence = clock_s - last
        if silence <= max(limit_s, 0.0):
            return None
        return BudgetVerdict('ERROR', f'no frame for {silence:.1f} s (max_perception_age_s '
                             f'{limit_s:.3f} s): the camera or the detector stopped; the safety '
                             'monitor stops the robot', math.nan, math.nan, silence, limit_s)

    def _over(self, now_s: float, verdict: BudgetVerdict) -> BudgetVerdict:
        """Report a problem that is not a measured age: WARN first, ERROR after ERROR_AFTER_S."""
        if self._over_since_s is None:
            self._over_since_s = now_s
        level = 'ERROR' if now_s - self._over_since_s >= ERROR_AFTER_S else 'WARN'
        return BudgetVerdict(level, verdict.message, verdict.latency_s, verdict.period_s,
                             verdict.worst_age_s, verdict.limit_s)


def limit_problem(max_age_s: float, human_speed_mps: float) -> str | None:
    """Why a limit answered by another node cannot be used (None: it can).

    The bounds are the safety monitor's own (:class:`~cobot_hybrid_perception.ssm.SsmConfig`):
    a node answering outside them is not the monitor, or not a sane one.
    """
    from cobot_hybrid_perception.ssm import SsmConfig
    from cobot_hybrid_protocol.settings import specs

    bounds = specs(SsmConfig)
    for name, value in (('max_perception_age_s', max_age_s),
                        ('human_speed_far_mps', human_speed_mps)):
        _, spec = bounds[name]
        low = spec.low if spec.low is not None else -math.inf
        high = spec.high if spec.high is not None else math.inf
        if not (math.isfinite(value) and low <= value <= high):
            return f"answered {name} {value}, outside the monitor's range {low:g}..{high:g}"
    return None
