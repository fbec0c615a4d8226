"""Edge filters: only exceptions and summaries go up. Pure Python on plain message dicts.

Each filter sees every message of its route as a dict (see :mod:`codecs`) and decides what
goes up now (:meth:`offer`) and what goes up periodically (:meth:`tick`):

* ``pass``: everything (then ``rate_limit_hz`` of the route downsamples);
* ``classes``: a ``Detection2DArray`` reduced to detections of the given classes scoring at
  least ``min_score``; nothing when none is left;
* ``on_change``: only when the values at ``fields`` (dotted paths, e.g. ``data`` or
  ``status.0.level``) differ from the last message sent;
* ``aggregate``: nothing per message; every ``period_s`` a summary of the numeric value at
  ``field`` (or the length of the list there): count, rate, min, max, mean, p50, p99;
* ``snapshot``: nothing per message; the route's latest message is sent when
  :class:`EventTrigger` on another route fires: an image as a snapshot
  (:mod:`cobot_hybrid_protocol.snapshot`: the JPEG, what triggered it, and the newest message
  of each ROS topic named in ``context``, such as the detections the robot had).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_protocol.limits import is_number_in

__all__ = ['Aggregate', 'ClassFilter', 'EventTrigger', 'FILTER_KINDS', 'FilterError',
           'OnChange', 'PassThrough', 'RateLimiter', 'Snapshot', 'make_filter', 'resolve_path']

FILTER_KINDS = ('pass', 'classes', 'on_change', 'aggregate', 'snapshot')
_MISSING = object()


class FilterError(BridgeError, ValueError):
    """A filter is misconfigured, or a message lacks the field it needs."""


def resolve_path(data: Any, path: str) -> Any:
    """Value at a dotted path (``status.0.level``); raises FilterError when absent."""
    value = data
    for part in path.split('.'):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, Sequence) and not isinstance(value, str) and part.isdigit() \
                and int(part) < len(value):
            value = value[int(part)]
        else:
            raise FilterError(f'field {path!r} is not in the message (stopped at {part!r})')
    return value


class PassThrough:
    """Everything goes up."""

    def offer(self, data: dict[str, Any], now_s: float) -> list[dict[str, Any]]:
        """Send it."""
        return [data]

    def tick(self, now_s: float) -> list[dict[str, Any]]:
        """No periodic output."""
        return []


@dataclass
class ClassFilter:
    """Detections of given classes above a score."""

    classes: frozenset[str]
    min_score: float = 0.0

    def offer(self, data: dict[str, Any], now_s: float) -> list[dict[str, Any]]:
        """Return the message with only the wanted detections, or nothing."""
        kept = []
        for det in data.get('detections', []):
            results = det.get('results') or []
            if not results:
                continue
            best = max(results, key=lambda r: r['hypothesis']['score'])
            if best['hypothesis']['class_id'] in self.classes and \
                    best['hypothesis']['score'] >= self.min_score:
                kept.append(det)
        return [{**data, 'detections': kept}] if kept else []

    def tick(self, now_s: float) -> list[dict[str, Any]]:
        """No periodic output."""
        return []


@dataclass
class OnChange:
    """Only changes of the watched fields."""

    fields: tuple[str, ...]
    _last: tuple[Any, ...] | None = None

    def offer(self, data: dict[str, Any], now_s: float) -> list[dict[str, Any]]:
        """Return the message if a watched field changed."""
        current = tuple(resolve_path(data, f) for f in self.fields)
        if current == self._last:
            return []
        self._last = current
        return [data]

    def tick(self, now_s: float) -> list[dict[str, Any]]:
        """No periodic output."""
        return []


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Aggregate:
    """A periodic summary of a numeric field (or a list's length)."""

    field_path: str
    period_s: float
    _values: list[float] = field(default_factory=list)
    _window_start: float | None = None

    def offer(self, data: dict[str, Any], now_s: float) -> list[dict[str, Any]]:
        """Collect the value; nothing goes up now."""
        if self._window_start is None:
            self._window_start = now_s
        value = resolve_path(data, self.field_path)
        if isinstance(value, (list, tuple)):
            value = len(value)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise FilterError(f'field {self.field_path!r} is not numeric: {value!r}') \
                    from None
        if isinstance(value, (int, float)) and math.isfinite(value):
            self._values.append(float(value))
        return []

    def tick(self, now_s: float) -> list[dict[str, Any]]:
        """Return the window's summary once ``period_s`` has passed (even an empty one)."""
        if self._window_start is None:
            self._window_start = now_s
            return []
        span = now_s - self._window_start
        if span < self.period_s:
            return []
        values, self._values, self._window_start = sorted(self._values), [], now_s
        summary: dict[str, Any] = {'field': self.field_path, 'window_s': round(span, 3),
                                   'count': len(values),
                                   'rate_hz': round(len(values) / span, 3) if span else 0.0}
        if values:
            summary.update(min=values[0], max=values[-1], mean=statistics.fmean(values),
                           p50=_percentile(values, 0.5), p99=_percentile(values, 0.99))
        return [summary]


@dataclass
class Snapshot:
    """Keeps the latest message; sends it when told to by a trigger."""

    latest: dict[str, Any] | None = None
    latest_raw: Any = None

    def offer(self, data: dict[str, Any], now_s: float) -> list[dict[str, Any]]:
        """Remember; nothing goes up now."""
        self.latest = data
        return []

    def tick(self, now_s: float) -> list[dict[str, Any]]:
        """No periodic output."""
        return []


@dataclass
class EventTrigger:
    """Fires when the value at ``field`` becomes ``equals`` (a transition, not a level)."""

    field_path: str
    equals: Any
    _last: Any = _MISSING

    def fires(self, data: dict[str, Any]) -> bool:
        """Whether this message is the event."""
        value = resolve_path(data, self.field_path)
        fired = bool(value == self.equals and self._last != self.equals)
        self._last = value
        return fired


@dataclass
class RateLimiter:
    """At most ``rate_hz`` messages per second (0: no limit)."""

    rate_hz: float
    _next_s: float = 0.0

    def allow(self, now_s: float) -> bool:
        """Whether a message may go now."""
        if self.rate_hz <= 0:
            return True
        if now_s < self._next_s:
            return False
        self._next_s = now_s + 1.0 / self.rate_hz
        return True


Filter = PassThrough | ClassFilter | OnChange | Aggregate | Snapshot


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not value or len(value) > 256 \
            or not all(isinstance(v, str) and 0 < len(v) <= 256 for v in value):
        raise FilterError(f'{what} must be a non-empty list of names (at most 256)')
    return value


def _bounded(value: Any, what: str, low: float, high: float) -> float:
    if not is_number_in(value, low, high):
        raise FilterError(f'{what} must be a number in [{low:g}, {high:g}]')
    return float(value)


def make_filter(spec: Mapping[str, Any] | None) -> Filter:
    """Build a filter from its YAML mapping (``{kind: ..., ...}``); errors name the key."""
    if spec is not None and not isinstance(spec, Mapping):
        raise FilterError('a filter is a mapping {kind: ..., ...}')
    spec = dict(spec or {'kind': 'pass'})
    kind = spec.pop('kind', 'pass')
    allowed = {'pass': set(), 'classes': {'classes', 'min_score'}, 'on_change': {'fields'},
               'aggregate': {'field', 'period_s'},
               'snapshot': {'trigger_topic', 'field', 'equals', 'context'}}
    if not isinstance(kind, str) or kind not in allowed:
        raise FilterError(f'filter kind {str(kind)[:40]!r}: use one of {FILTER_KINDS}')
    unknown = set(spec) - allowed[kind]
    if unknown:
        raise FilterError(f'filter {kind} does not take {sorted(map(str, unknown))}')
    if kind == 'classes':
        classes = _strings(spec.get('classes'), 'filter classes: "classes"')
        return ClassFilter(frozenset(classes),
                           _bounded(spec.get('min_score', 0.0), 'min_score', 0.0, 1.0))
    if kind == 'on_change':
        return OnChange(tuple(_strings(spec.get('fields'),
                                       'filter on_change: "fields" (dotted paths)')))
    if kind == 'aggregate':
        if not isinstance(spec.get('field'), str) or not spec['field']:
            raise FilterError('filter aggregate needs "field" (a dotted path)')
        return Aggregate(spec['field'], _bounded(spec.get('period_s', 0), 'filter aggregate '
                                                 '"period_s"', 0.01, 86_400.0))
    if kind == 'snapshot':
        if not isinstance(spec.get('trigger_topic'), str) or not isinstance(
                spec.get('field'), str) or 'equals' not in spec \
                or isinstance(spec['equals'], (list, dict)):
            raise FilterError('filter snapshot needs trigger_topic, field (names) and equals '
                              '(a value)')
        if 'context' in spec:
            _strings(spec['context'], 'filter snapshot: "context" (ROS topics of other routes)')
        return Snapshot()
    return PassThrough()
