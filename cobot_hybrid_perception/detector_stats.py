"""Running statistics of a detector: per-stage latency, fps, dropped and failed frames.

Thread-safe enough for one writer (the inference worker) and one reader (diagnostics): the
counters are plain ints and the windows are bounded deques, read as snapshots.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field

from cobot_hybrid_perception.detector import StageTimes

__all__ = ['DetectorStats']

WINDOW = 100


@dataclass
class DetectorStats:
    """Counters and latency windows of the last :data:`WINDOW` frames."""

    processed: int = 0
    dropped: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str = ''
    _stages: dict[str, deque[float]] = field(default_factory=lambda: {
        name: deque(maxlen=WINDOW) for name in
        ('convert', 'preprocess', 'infer', 'postprocess', 'total')})
    _done_at: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    _was_failing: bool = False

    def record(self, convert_ms: float, times: StageTimes, total_ms: float) -> None:
        """Count a processed frame: its stage times and receive-to-publish time."""
        self.processed += 1
        self.consecutive_failures = 0
        for name, value in (('convert', convert_ms), ('preprocess', times.preprocess_ms),
                            ('infer', times.infer_ms), ('postprocess', times.postprocess_ms),
                            ('total', total_ms)):
            self._stages[name].append(value)
        self._done_at.append(time.monotonic())

    def fail(self, reason: str) -> None:
        """Count a frame that could not be processed (bad input, broken model output)."""
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = reason

    def level_changed(self) -> bool:
        """Return True once each time frames start or stop failing."""
        failing = self.consecutive_failures > 0
        changed = failing != self._was_failing
        self._was_failing = failing
        return changed

    def summary(self) -> dict[str, float | int]:
        """Median per-stage latency [ms], fps, counters."""
        out: dict[str, float | int] = {}
        for name, window in self._stages.items():
            values = list(window)
            out[f'{name}_ms_p50'] = statistics.median(values) if values else 0.0
        done = list(self._done_at)
        span = done[-1] - done[0] if len(done) > 1 else 0.0
        out['fps'] = (len(done) - 1) / span if span > 0 else 0.0
        out.update(processed=self.processed, dropped=self.dropped, failures=self.failures)
        return out
