"""Edge or cloud: the decision matrix of a profiled system. Pure Python, no ROS.

The seed's step 1: measure each workload (its deadline, its latency on the edge, the data it
would have to send if it ran in the cloud, its CPU and memory) and the link (round trip,
uplink bandwidth, whether it drops), then place each workload by one rule
(:func:`place`):

0. a safety workload stays on the edge, always: it must work offline, and no measured link
   (one that has not dropped yet) makes a cloud round trip part of a protective stop;
1. a fleet workload (it needs every robot's state) goes to the cloud, where they all are;
2. a deadline shorter than the cloud round trip (RTT plus sending one input over the uplink)
   keeps it on the edge;
3. a workload that needs more uplink than the link has stays on the edge;
4. a heavy workload (at least :data:`HEAVY_CORES` of a core) whose deadline is at least
   :data:`TOLERANT_FACTOR` round trips goes to the cloud: latency-tolerant and heavy;
5. anything else stays where it is light and close: the edge.

The egress a cloud placement implies is the workload's input rate times a 30-day month.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ['HEAVY_CORES', 'MONTH_S', 'TOLERANT_FACTOR', 'Link', 'Placement', 'Workload',
           'decision_matrix', 'format_matrix', 'place']

#: CPU (in cores) from which a workload is heavy enough to be worth moving.
HEAVY_CORES = 0.25
#: A deadline this many cloud round trips long is latency-tolerant.
TOLERANT_FACTOR = 10.0
#: Seconds in the month the egress is priced over (30 days).
MONTH_S = 30 * 86400.0


@dataclass(frozen=True)
class Link:
    """The robot's link to the cloud as measured (NaN: not measured)."""

    rtt_s: float = math.nan
    uplink_bytes_per_s: float = math.nan
    may_drop: bool = True
    source: str = ''     # where the numbers come from (a probe, the bridge's diagnostics)


@dataclass(frozen=True)
class Workload:
    """One piece of work as measured on the edge (NaN: not known)."""

    name: str
    node: str
    deadline_s: float = math.nan
    deadline_source: str = ''
    edge_latency_s: float = math.nan
    input_topic: str = ''
    input_bytes_per_s: float = math.nan   # what it would upload if it ran in the cloud
    input_message_bytes: float = math.nan
    cpu_cores: float = math.nan
    rss_mb: float = math.nan
    safety: bool = False
    fleet: bool = False


@dataclass(frozen=True)
class Placement:
    """Where the rule puts a workload, why, and the egress a cloud placement would cost."""

    workload: Workload
    placement: str            # edge | cloud | unknown
    reason: str
    cloud_round_trip_s: float = math.nan
    egress_gb_month: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None)."""
        def clean(value: Any) -> Any:
            return None if isinstance(value, float) and not math.isfinite(value) else value
        row = {k: clean(v) for k, v in asdict(self.workload).items()}
        row.update(placement=self.placement, reason=self.reason,
                   cloud_round_trip_s=clean(self.cloud_round_trip_s),
                   egress_gb_month=clean(self.egress_gb_month))
        return row


def place(work: Workload, link: Link) -> Placement:
    """Apply the rule (module docstring) to one workload."""
    egress = work.input_bytes_per_s * MONTH_S / 1e9
    send_s = (work.input_message_bytes / link.uplink_bytes_per_s
              if link.uplink_bytes_per_s > 0 else math.nan)
    round_trip = link.rtt_s + (send_s if math.isfinite(send_s) else 0.0)

    def result(where: str, why: str) -> Placement:
        return Placement(work, where, why, round_trip, egress)

    if work.safety:   # first: nothing, a fleet role included, moves a safety function
        return result('edge', 'safety function: it must work offline'
                      + (' (and the link may drop)' if link.may_drop else ''))
    if work.fleet:
        return result('cloud', "a fleet function: it needs every robot's state")
    if work.deadline_s < 0 or link.rtt_s < 0:
        return result('unknown', 'a negative deadline or round trip is not a measurement')
    if math.isfinite(work.deadline_s) and math.isfinite(round_trip) \
            and work.deadline_s < round_trip:
        return result('edge', f'deadline {1e3 * work.deadline_s:.0f} ms is under the cloud '
                      f'round trip {1e3 * round_trip:.0f} ms')
    if math.isfinite(work.input_bytes_per_s) and link.uplink_bytes_per_s > 0 \
            and work.input_bytes_per_s > link.uplink_bytes_per_s:
        return result('edge', f'needs {work.input_bytes_per_s / 1e6:.2f} MB/s up, the link '
                      f'has {link.uplink_bytes_per_s / 1e6:.2f} MB/s')
    if not math.isfinite(work.deadline_s):
        return result('unknown', 'no deadline known: give the workload one')
    if not math.isfinite(round_trip) or round_trip < 0:
        return result('unknown', 'the link was not measured (no RTT)')
    round_trip = max(round_trip, 1e-6)   # a loopback link: 0 round trips would divide by 0
    heavy = math.isfinite(work.cpu_cores) and work.cpu_cores >= HEAVY_CORES
    if heavy and work.deadline_s >= TOLERANT_FACTOR * round_trip:
        return result('cloud', f'latency-tolerant (deadline {work.deadline_s:.3g} s, '
                      f'{work.deadline_s / round_trip:.0f} round trips) and heavy '
                      f'({work.cpu_cores:.2f} cores)')
    return result('edge', 'light' if not heavy else
                  f'heavy but the deadline is only {work.deadline_s / round_trip:.1f} round '
                  'trips')


def decision_matrix(workloads: Sequence[Workload], link: Link) -> list[Placement]:
    """Place every workload."""
    return [place(work, link) for work in workloads]


def _fmt(value: float, scale: float = 1.0, digits: int = 1) -> str:
    return f'{value * scale:.{digits}f}' if math.isfinite(value) else '-'


def format_matrix(rows: Sequence[Placement], link: Link) -> str:
    """Format the matrix as a markdown table, the link in a line above it."""
    lines = [f'link: RTT {_fmt(link.rtt_s, 1e3)} ms, uplink '
             f'{_fmt(link.uplink_bytes_per_s, 1e-6, 2)} MB/s, may drop: '
             f'{"yes" if link.may_drop else "no"} ({link.source or "not measured"})', '',
             '| workload | node | deadline ms | edge latency p50 ms | CPU cores | RSS MB | '
             'input | input MB/s | cloud round trip ms | placement | why | egress GB/month |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        w = row.workload
        lines.append(
            f'| {w.name} | {w.node} | {_fmt(w.deadline_s, 1e3, 0)} | '
            f'{_fmt(w.edge_latency_s, 1e3)} | {_fmt(w.cpu_cores, 1.0, 2)} | '
            f'{_fmt(w.rss_mb, 1.0, 0)} | {w.input_topic or "-"} | '
            f'{_fmt(w.input_bytes_per_s, 1e-6, 3)} | {_fmt(row.cloud_round_trip_s, 1e3)} | '
            f'**{row.placement}** | {row.reason} | {_fmt(row.egress_gb_month, 1.0, 1)} |')
    return '\n'.join(lines)
