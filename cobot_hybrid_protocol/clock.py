"""Clocks of both sides: a wall clock for stamps and ages, a monotonic one for schedules.

Robots boot with a wrong wall clock and NTP steps it, forwards or backwards, by seconds or
days. Schedules (group commit, snapshots, retries) therefore run on the monotonic clock;
the wall clock is only used for what must mean the same after a restart (message creation
times, command validity) and a step of it is detected by comparing the two
(:class:`WallStepDetector`), so ages can be re-based instead of expiring a backlog.

Cores (the bridge, its queue and command check, the planner) take a :class:`Clock`; tests
inject a :class:`SteppableClock` (no system clock is ever changed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

__all__ = ['Clock', 'SYSTEM_CLOCK', 'SteppableClock', 'SystemClock', 'WallStepDetector']


class Clock(Protocol):
    """Wall time (unix seconds, may jump) and monotonic time (seconds, never jumps)."""

    def wall(self) -> float:
        """Unix time [s]."""
        ...

    def monotonic(self) -> float:
        """Monotonic time [s] since an arbitrary origin."""
        ...


class SystemClock:
    """The operating system's clocks."""

    def wall(self) -> float:
        """``time.time()``."""
        return time.time()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()


@dataclass
class SteppableClock:
    """A clock for tests: both advance together; :meth:`step_wall` moves the wall alone."""

    wall_s: float = 1_800_000_000.0
    monotonic_s: float = 1000.0

    def wall(self) -> float:
        """Return the simulated unix time."""
        return self.wall_s

    def monotonic(self) -> float:
        """Return the simulated monotonic time."""
        return self.monotonic_s

    def advance(self, seconds: float) -> None:
        """Let time pass (both clocks)."""
        self.wall_s += seconds
        self.monotonic_s += seconds

    def step_wall(self, seconds: float) -> None:
        """Jump the wall clock alone (an NTP step); the monotonic clock does not move."""
        self.wall_s += seconds


@dataclass
class WallStepDetector:
    """Notices wall-clock steps: the offset wall - monotonic changes beyond ``threshold_s``.

    Slewing (NTP's gradual correction, at most 0.5 ms/s) stays below the threshold and is
    followed silently.
    """

    clock: Clock
    threshold_s: float = 2.0
    _offset: float | None = None

    def check(self) -> float:
        """Return the step since the last call [s] (0.0 if none beyond the threshold)."""
        offset = self.clock.wall() - self.clock.monotonic()
        previous, self._offset = self._offset, offset
        if previous is None:
            return 0.0
        step = offset - previous
        return 0.0 if abs(step) < self.threshold_s else step
