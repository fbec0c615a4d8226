"""How fast each tracked person closes in on the robot, for diagnostics. Pure Python, no ROS.

The detector's tracker gives people persistent ids (``person-17``); from one frame to the next
the change of a person's separation from the robot gives their approach speed (positive:
coming closer), smoothed exponentially. The SSM decision does not use it (ISO/TS 15066 keeps
the standard's human speeds); it shows who moves faster than those speeds assume.

Only confirmed tracks count: ids starting ``new-`` (tentative) or ``det-`` (untracked) are
skipped, as are people the node could not place. With the detector's ``tracking`` off, ids are
per-frame indices and the speeds mean nothing. A person unseen for ``max_gap_s`` starts over;
at most ``max_people`` are followed (the nearest).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ['UNTRACKED_PREFIXES', 'ApproachSpeeds']

UNTRACKED_PREFIXES = ('new-', 'det-')


@dataclass
class _Seen:
    stamp_s: float
    separation_m: float
    speed_mps: float | None = None


@dataclass
class ApproachSpeeds:
    """Per tracked person: the smoothed rate their separation shrinks [m/s]."""

    smoothing: float = 0.5      # weight of the newest frame
    max_gap_s: float = 1.0
    max_people: int = 32
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def update(self, stamp_s: float, separations: Mapping[str, float]) -> dict[str, float]:
        """Take one frame's separations by id; return the speeds known so far, by id."""
        tracked = {label: d for label, d in separations.items()
                   if not label.startswith(UNTRACKED_PREFIXES) and math.isfinite(d)}
        for label in [k for k, s in self._seen.items()
                      if stamp_s - s.stamp_s > self.max_gap_s or s.stamp_s > stamp_s]:
            del self._seen[label]   # gone too long, or time went backwards
        for label, separation in sorted(tracked.items(), key=lambda kv: kv[1]):
            before = self._seen.get(label)
            if before is None:
                self._seen[label] = _Seen(stamp_s, separation)
                continue
            dt = stamp_s - before.stamp_s
            if dt <= 0:
                continue   # the same frame again
            sample = (before.separation_m - separation) / dt
            speed = sample if before.speed_mps is None else (
                self.smoothing * sample + (1.0 - self.smoothing) * before.speed_mps)
            self._seen[label] = _Seen(stamp_s, separation, speed)
        if len(self._seen) > self.max_people:   # keep the nearest: they matter most
            keep = sorted(self._seen.items(), key=lambda kv: kv[1].separation_m)
            self._seen = dict(keep[:self.max_people])
        return {label: s.speed_mps for label, s in self._seen.items()
                if s.speed_mps is not None and label in tracked}
