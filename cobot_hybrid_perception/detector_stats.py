"""Running statistics of a detector: per-stage latency, fps, dropped and failed frames.

Thread-safe enough for one writer (the inference worker) and one reader (diagnostics): the
counters are plain ints and the windows are bounded deques, read as snapshots.

The detector's health comes from here too: :meth:`DetectorStats.level` is ``OK``, ``WARN``
after a failed frame, ``ERROR`` after :data:`FAILURES_FOR_ERROR` in a row;
:meth:`DetectorStats.diagnostic_values` is what ``detector_node`` publishes;
:func:`diagnostics_due` says when it publishes.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from cobot_hybrid_perception.detector import StageTimes

__all__ = ['DIAG_PERIOD_S', 'FAILURES_FOR_ERROR', 'DetectorStats', 'diagnostics_due']

WINDOW = 100
#: Failed frames in a row that make the detector's health ERROR (fewer: WARN).
FAILURES_FOR_ERROR = 3
#: Diagnostics period [s]; forced publications (a failure, a level change) come in between.
DIAG_PERIOD_S = 1.0


def diagnostics_due(now_s: float, last_s: float, force: bool = False) -> bool:
    """Return whether to publish now: forced always, periodic at most every half period.

    The half period keeps a timer tick right after a forced publication from repeating it.
    """
    return force or now_s - last_s >= DIAG_PERIOD_S * 0.5


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

    def level(self) -> str:
        """'OK'; 'WARN' after a failed frame; 'ERROR' after FAILURES_FOR_ERROR in a row."""
        if self.consecutive_failures >= FAILURES_FOR_ERROR:
            return 'ERROR'
        return 'WARN' if self.consecutive_failures else 'OK'

    def message(self) -> str:
        """'ok' while frames succeed, else the reason the last one failed."""
        return 'ok' if self.level() == 'OK' else self.last_error

    def diagnostic_values(self, identity: Mapping[str, str]) -> dict[str, str]:
        """Return :meth:`summary` as text (floats to 2 decimals), then ``identity``."""
        values = {key: f'{value:.2f}' if isinstance(value, float) else str(value)
                  for key, value in self.summary().items()}
        return {**values, **identity}
