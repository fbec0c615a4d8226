"""State-based CRDTs for robot telemetry, so the cloud's merged view ignores delivery order.

When the link returns, the bridge sends state snapshots; the cloud merges them. Each type's
``merge`` is commutative, associative and idempotent, so any order, duplication or loss of
intermediate snapshots gives the same result once the latest of each replica arrived:

* :class:`GCounter` / :class:`PNCounter`: per-replica counts (events, detections, stops);
* :class:`LWWMap`: last-known value per key, ordered by a hybrid logical clock (:class:`HLC`)
  with the replica id as the tie-break, so clocks that drift never make an old value win
  over one that causally followed it;
* :class:`ORSet`: observed-remove set (active alarms): an alarm raised again after a removal
  is present, a removal only removes the additions it saw.

All states round-trip through plain JSON (``to_json`` / ``from_json``). Parsing is strict and
bounded, since snapshots come from the network: counts are integers in [0, 2**53) (exact in
every JSON reader), HLC stamps have ``wall_ms`` in [0, 2**53) and ``logical`` in [0, 2**32),
and a snapshot holds at most :data:`MAX_ENTRIES` keys per map and :data:`MAX_TAGS` tags.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cobot_hybrid_protocol.errors import CrdtError

__all__ = ['CrdtError', 'GCounter', 'HLC', 'HlcTimestamp', 'LWWMap', 'MAX_COUNT', 'MAX_ENTRIES',
           'MAX_TAGS', 'ORSet', 'PNCounter', 'TelemetryState']

MAX_COUNT = 2**53 - 1      # counts and HLC wall_ms: exact as JSON numbers everywhere
MAX_LOGICAL = 2**32 - 1
MAX_ENTRIES = 1024         # replicas per counter, counters, keys of the LWW map, alarms
MAX_TAGS = 100_000         # add tags plus tombstones of the alarm set


def _count(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise CrdtError(f'{where} must be an integer in [0, 2**53), got {str(value)[:40]}')
    return value


def _bounded(data: Any, where: str, limit: int = MAX_ENTRIES) -> None:
    if len(data) > limit:
        raise CrdtError(f'{where} has {len(data)} entries, more than {limit}')



def _json_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class GCounter:
    """Grow-only counter: one monotone count per replica; merge takes the maximum."""

    counts: dict[str, int] = field(default_factory=dict)

    def increment(self, replica: str, amount: int = 1) -> None:
        """Add ``amount`` (>= 0) on ``replica``."""
        if amount < 0:
            raise CrdtError('a GCounter only grows; use a PNCounter')
        self.counts[replica] = self.counts.get(replica, 0) + amount

    @property
    def value(self) -> int:
        """Total over replicas."""
        return sum(self.counts.values())

    def merge(self, other: GCounter) -> GCounter:
        """Least upper bound of two states."""
        keys = self.counts.keys() | other.counts.keys()
        return GCounter({k: max(self.counts.get(k, 0), other.counts.get(k, 0)) for k in keys})

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return dict(self.counts)

    @classmethod
    def from_json(cls, data: Any) -> GCounter:
        """Parse (raises CrdtError)."""
        if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
            raise CrdtError(f'GCounter must map replica -> count >= 0, got {str(data)[:80]}')
        _bounded(data, 'GCounter')
        return cls({k: _count(v, f'GCounter[{k[:40]!r}]') for k, v in data.items()})


@dataclass
class PNCounter:
    """Counter that goes up and down: two GCounters."""

    up: GCounter = field(default_factory=GCounter)
    down: GCounter = field(default_factory=GCounter)

    def add(self, replica: str, amount: int) -> None:
        """Add (or subtract, when negative) ``amount`` on ``replica``."""
        if amount >= 0:
            self.up.increment(replica, amount)
        else:
            self.down.increment(replica, -amount)

    @property
    def value(self) -> int:
        """Current value."""
        return self.up.value - self.down.value

    def merge(self, other: PNCounter) -> PNCounter:
        """Least upper bound of two states."""
        return PNCounter(self.up.merge(other.up), self.down.merge(other.down))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {'p': self.up.to_json(), 'n': self.down.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> PNCounter:
        """Parse (raises CrdtError)."""
        if not isinstance(data, dict) or set(data) != {'p', 'n'}:
            raise CrdtError(f'PNCounter must be {{"p": ..., "n": ...}}, got {str(data)[:80]}')
        return cls(GCounter.from_json(data['p']), GCounter.from_json(data['n']))


@dataclass(frozen=True, order=True)
class HlcTimestamp:
    """Hybrid logical clock reading: (physical ms, logical counter, replica) orders totally."""

    wall_ms: int
    logical: int
    replica: str

    def to_json(self) -> list[Any]:
        """``[wall_ms, logical, replica]``."""
        return [self.wall_ms, self.logical, self.replica]

    @classmethod
    def from_json(cls, data: Any) -> HlcTimestamp:
        """Parse (raises CrdtError)."""
        if (not isinstance(data, list) or len(data) != 3 or type(data[0]) is not int
                or type(data[1]) is not int or not isinstance(data[2], str)
                or not 0 <= data[0] <= MAX_COUNT or not 0 <= data[1] <= MAX_LOGICAL):
            raise CrdtError('HLC timestamp must be [wall_ms in [0, 2**53), logical in '
                            f'[0, 2**32), replica], got {str(data)[:80]}')
        return cls(data[0], data[1], data[2])


@dataclass
class HLC:
    """A hybrid logical clock of one replica (Kulkarni et al.)."""

    replica: str
    wall_ms: int = 0
    logical: int = 0

    def now(self, physical_ms: int | None = None) -> HlcTimestamp:
        """Timestamp a local event."""
        physical = int(time.time() * 1000) if physical_ms is None else physical_ms
        if physical > self.wall_ms:
            self.wall_ms, self.logical = physical, 0
        else:
            self.logical += 1
        return HlcTimestamp(self.wall_ms, self.logical, self.replica)

    def observe(self, remote: HlcTimestamp, physical_ms: int | None = None) -> None:
        """Move past a timestamp received from another replica."""
        physical = int(time.time() * 1000) if physical_ms is None else physical_ms
        top = max(self.wall_ms, remote.wall_ms, physical)
        if top == self.wall_ms == remote.wall_ms:
            self.logical = max(self.logical, remote.logical) + 1
        elif top == self.wall_ms:
            self.logical += 1
        elif top == remote.wall_ms:
            self.logical = remote.logical + 1
        else:
            self.logical = 0
        self.wall_ms = top


@dataclass
class LWWMap:
    """Last-writer-wins register per key; the greatest HLC timestamp wins."""

    entries: dict[str, tuple[HlcTimestamp, Any]] = field(default_factory=dict)

    def set(self, key: str, value: Any, stamp: HlcTimestamp) -> None:
        """Write ``value`` at ``stamp`` (ignored if an entry with a later stamp exists).

        Equal stamps cannot come from one healthy replica; should they meet anyway, the value
        with the greater JSON text wins, so merging stays commutative.
        """
        current = self.entries.get(key)
        if current is None or stamp > current[0] or (
                stamp == current[0] and _json_key(value) > _json_key(current[1])):
            self.entries[key] = (stamp, value)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the current value of ``key``."""
        entry = self.entries.get(key)
        return default if entry is None else entry[1]

    def merge(self, other: LWWMap) -> LWWMap:
        """Per key, the entry with the greatest stamp."""
        merged = LWWMap(dict(self.entries))
        for key, (stamp, value) in other.entries.items():
            merged.set(key, value, stamp)
        return merged

    def to_json(self) -> dict[str, Any]:
        """``{key: [stamp, value]}``."""
        return {k: [s.to_json(), v] for k, (s, v) in self.entries.items()}

    @classmethod
    def from_json(cls, data: Any) -> LWWMap:
        """Parse (raises CrdtError)."""
        if not isinstance(data, dict):
            raise CrdtError(f'LWWMap must be an object, got {type(data).__name__}')
        _bounded(data, 'LWWMap')
        entries = {}
        for key, item in data.items():
            if not isinstance(item, list) or len(item) != 2:
                raise CrdtError(f'LWWMap entry {key!r} must be [stamp, value]')
            entries[str(key)] = (HlcTimestamp.from_json(item[0]), item[1])
        return cls(entries)


@dataclass
class ORSet:
    """Observed-remove set: elements carry unique add tags; removal tombstones seen tags."""

    adds: dict[str, set[str]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)

    def add(self, element: str, tag: str | None = None) -> None:
        """Add ``element`` with a fresh unique tag."""
        self.adds.setdefault(element, set()).add(tag or uuid.uuid4().hex)

    def remove(self, element: str) -> None:
        """Remove the additions of ``element`` seen so far."""
        self.removed |= self.adds.get(element, set())

    def __contains__(self, element: object) -> bool:
        return bool(self.adds.get(str(element), set()) - self.removed)

    @property
    def elements(self) -> set[str]:
        """Elements present now."""
        return {e for e, tags in self.adds.items() if tags - self.removed}

    def merge(self, other: ORSet) -> ORSet:
        """Union of adds and of tombstones."""
        adds = {e: set(tags) for e, tags in self.adds.items()}
        for element, tags in other.adds.items():
            adds.setdefault(element, set()).update(tags)
        return ORSet(adds, self.removed | other.removed)

    def to_json(self) -> dict[str, Any]:
        """Return ``{"adds": {element: [tags]}, "removed": [tags]}``, sorted (stable bytes)."""
        return {'adds': {e: sorted(t) for e, t in sorted(self.adds.items())},
                'removed': sorted(self.removed)}

    @classmethod
    def from_json(cls, data: Any) -> ORSet:
        """Parse (raises CrdtError)."""
        if not isinstance(data, dict) or set(data) != {'adds', 'removed'} \
                or not isinstance(data['adds'], dict) or not isinstance(data['removed'], list) \
                or not all(isinstance(t, list) for t in data['adds'].values()):
            raise CrdtError('ORSet must be {"adds": {element: [tags]}, "removed": [tags]}')
        _bounded(data['adds'], 'ORSet')
        _bounded(data['removed'] + [t for tags in data['adds'].values() for t in tags],
                 'ORSet tags', MAX_TAGS)
        return cls({str(e): set(map(str, t)) for e, t in data['adds'].items()},
                   set(map(str, data['removed'])))


@dataclass
class TelemetryState:
    """A robot's telemetry state: counters, last-known values, active alarms.

    Alarms are last-writer-wins flags (``{name: [stamp, true|false]}``), one entry per alarm
    however often it toggles: an observed-remove set kept a tombstone per clearing, and a
    robot's state outgrew what the cloud accepts after a few thousand protective stops. The
    robot is the only writer of its alarms, so its HLC orders every change. A snapshot in the
    earlier form (``{"adds": ..., "removed": ...}``, robots and stores from before) is still
    read: an alarm present there becomes a flag set at stamp 0, which any newer change wins.
    """

    counters: dict[str, PNCounter] = field(default_factory=dict)
    values: LWWMap = field(default_factory=LWWMap)
    alarms: LWWMap = field(default_factory=LWWMap)

    @property
    def active_alarms(self) -> set[str]:
        """The alarms raised now."""
        return {name for name, (_, on) in self.alarms.entries.items() if on is True}

    def merge(self, other: TelemetryState) -> TelemetryState:
        """Merge every part."""
        names = self.counters.keys() | other.counters.keys()
        counters = {n: self.counters.get(n, PNCounter()).merge(other.counters.get(n, PNCounter()))
                    for n in names}
        return TelemetryState(counters, self.values.merge(other.values),
                              self.alarms.merge(other.alarms))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (what the bridge sends up)."""
        return {'counters': {n: c.to_json() for n, c in sorted(self.counters.items())},
                'values': self.values.to_json(), 'alarms': self.alarms.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> TelemetryState:
        """Parse (raises CrdtError)."""
        if not isinstance(data, dict) or set(data) != {'counters', 'values', 'alarms'}:
            raise CrdtError('telemetry state must have exactly counters, values, alarms')
        if not isinstance(data['counters'], dict):
            raise CrdtError('counters must be an object')
        _bounded(data['counters'], 'counters')
        return cls({str(n): PNCounter.from_json(c) for n, c in data['counters'].items()},
                   LWWMap.from_json(data['values']), _alarms_from_json(data['alarms']))


def _alarms_from_json(data: Any) -> LWWMap:
    if isinstance(data, dict) and set(data) == {'adds', 'removed'}:   # the earlier ORSet form
        legacy = ORSet.from_json(data)
        return LWWMap({name: (HlcTimestamp(0, 0, ''), True) for name in legacy.elements})
    alarms = LWWMap.from_json(data)
    for name, (_, on) in alarms.entries.items():
        if not isinstance(on, bool):
            raise CrdtError(f'alarm {name[:40]!r} must be true or false')
    return alarms
