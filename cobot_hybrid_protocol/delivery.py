"""End-to-end delivery acknowledgements: the cloud says what it has durably stored.

A broker's PUBACK only says the broker took a message; a broker killed before it saved it, or
one with no persistence, loses it while the robot has already deleted its copy. With
``delivery: cloud`` the robot keeps every message until the consumer (the planner's fleet
store) acknowledges it *after its own commit*, on the robot's own topic::

    cobot/v1/<robot_id>/delivered        (QoS 1, never retained; cloud -> robot)
    {"schema": "cobot_hybrid/delivered/v1", "robot_id": "cobot-7",
     "ranges": [[101, 180], [182, 190]]}      # seqs stored, inclusive ranges

Ranges, not "the highest contiguous seq": seqs have gaps (messages dropped at the edge by TTL
or size, at most once topics), which the cloud cannot tell from losses. A lost acknowledgement
only means the robot sends those messages again; the cloud drops the duplicates by
``(robot_id, seq)`` and acknowledges them again.

:class:`DeliveredSeqs` collects what a consumer stored, per robot, and makes the payloads;
:func:`parse_delivered` reads one on the robot, within limits.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.limits import Limits, parse_json
from cobot_hybrid_protocol.topics import delivered_topic

__all__ = ['DELIVERED_SCHEMA', 'MAX_RANGES', 'DeliveredSeqs', 'delivered_payload',
           'delivered_topic', 'parse_delivered', 'to_ranges']

DELIVERED_SCHEMA = 'cobot_hybrid/delivered/v1'
MAX_RANGES = 1000
_LIMITS = Limits(max_bytes=64 * 1024, max_depth=3, max_string=128, max_items=MAX_RANGES,
                 max_values=3 * MAX_RANGES + 8, unique_keys=True)



def to_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Return the sorted, merged inclusive ranges of ``seqs``."""
    ranges: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


def delivered_payload(robot_id: str, ranges: list[tuple[int, int]]) -> bytes:
    """Return the acknowledgement of ``ranges`` (at most :data:`MAX_RANGES`) for a robot."""
    if len(ranges) > MAX_RANGES:
        raise ValueError(f'at most {MAX_RANGES} ranges per acknowledgement')
    return json.dumps({'schema': DELIVERED_SCHEMA, 'robot_id': robot_id,
                       'ranges': [[a, b] for a, b in ranges]}, separators=(',', ':')).encode()


def parse_delivered(payload: bytes, robot_id: str) -> list[tuple[int, int]]:
    """Read an acknowledgement meant for ``robot_id``; raise PayloadError if it is not one."""
    data = parse_json(payload, _LIMITS, 'a delivery acknowledgement')
    if not isinstance(data, dict) or set(data) != {'schema', 'robot_id', 'ranges'} \
            or data['schema'] != DELIVERED_SCHEMA:
        raise PayloadError('bad_type', f'a delivery acknowledgement is {{schema: '
                           f'{DELIVERED_SCHEMA}, robot_id, ranges}}')
    if data['robot_id'] != robot_id:
        raise PayloadError('bad_type', f'acknowledgement for {str(data["robot_id"])[:64]!r}, '
                           f'not {robot_id!r}')
    ranges = []
    for item in data['ranges'] if isinstance(data['ranges'], list) else [None]:
        if not isinstance(item, list) or len(item) != 2 \
                or not all(type(v) is int and 0 < v < 2**63 for v in item) \
                or item[0] > item[1]:
            raise PayloadError('bad_type', 'ranges must be [[first, last], ...] of seqs, '
                               'first <= last')
        ranges.append((item[0], item[1]))
    return ranges


@dataclass
class DeliveredSeqs:
    """Seqs a consumer has stored (committed), per robot, until acknowledged."""

    pending: dict[str, set[int]] = field(default_factory=dict)

    def add(self, robot_id: str, seq: int) -> None:
        """Record one stored (or already stored: a duplicate) message."""
        self.pending.setdefault(robot_id, set()).add(seq)

    def take(self) -> list[tuple[str, bytes]]:
        """Return ``(topic, payload)`` acknowledgements for everything recorded; forget it."""
        out = []
        for robot_id, seqs in sorted(self.pending.items()):
            ranges = to_ranges(seqs)
            for start in range(0, len(ranges), MAX_RANGES):
                out.append((delivered_topic(robot_id),
                            delivered_payload(robot_id, ranges[start:start + MAX_RANGES])))
        self.pending.clear()
        return out
