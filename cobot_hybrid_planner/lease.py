"""Which planner replica owns a fleet: a lease kept in a retained MQTT message. Pure Python.

Every replica of a fleet subscribes ``cobot/v1/planners/<fleet>/lease`` (retained) and feeds
what arrives to :meth:`FleetLease.observe`; :meth:`FleetLease.tick` says what to publish
(retained, QoS 1). The record is ``{"fleet", "owner", "epoch"}``:

* the owner re-publishes it every ``lease_s / 3``; a replica that has not *received* a
  renewal for ``lease_s`` (its own clock: no clock sync needed) claims the fleet with
  ``epoch + 1``, listens for ``settle_s``, and owns it if its own claim came back and its id
  is the lowest among the claims of that epoch it heard (two replicas claiming at once agree
  on one winner; one cut off from the broker never wins);
* an owner steps down at once on a record of a higher epoch, or of its epoch with a lower
  owner id, and when its own renewals have not come back for ``2/3 lease_s`` (cut off from
  the broker: it must stop before a standby may take over);
* the epoch fences stale owners: the planner puts it in every mission version
  (``epoch * 1,000,000 + n``), so a robot takes the newest owner's missions and refuses an
  old owner's as superseded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.limits import Limits, parse_json
from cobot_hybrid_protocol.topics import planner_topic

__all__ = ['FleetLease', 'LeaseRecord', 'lease_topic']

_LEASE_LIMITS = Limits(max_bytes=1024, max_depth=2, max_string=256, max_items=8, max_values=16)


def lease_topic(fleet_id: str) -> str:
    """Return the retained topic of a fleet's lease."""
    return planner_topic(fleet_id, 'lease')


@dataclass(frozen=True)
class LeaseRecord:
    """Who owns the fleet, since which epoch."""

    fleet: str
    owner: str
    epoch: int

    def to_json(self) -> bytes:
        """Return the wire form."""
        return json.dumps({'fleet': self.fleet, 'owner': self.owner,
                           'epoch': self.epoch}).encode()

    @staticmethod
    def parse(payload: bytes) -> LeaseRecord | None:
        """Read a record; None for anything malformed."""
        try:
            data = parse_json(payload, _LEASE_LIMITS, 'a lease record')
        except PayloadError:
            return None
        if not isinstance(data, dict) or set(data) != {'fleet', 'owner', 'epoch'} \
                or not isinstance(data['fleet'], str) or not isinstance(data['owner'], str) \
                or type(data['epoch']) is not int or not 1 <= data['epoch'] < 2**63 \
                or not data['owner']:
            return None
        return LeaseRecord(data['fleet'], data['owner'], data['epoch'])


@dataclass
class FleetLease:
    """One replica's view of one fleet's lease."""

    fleet_id: str
    replica_id: str
    lease_s: float = 6.0
    settle_s: float = 1.0
    state: str = 'standby'                   # standby | claiming | owner
    record: LeaseRecord | None = None        # the newest record heard
    malformed: int = 0
    _heard_at: float | None = None           # when a record (renewal) was last heard
    _started_at: float | None = None
    _claim_epoch: int = 0
    _claim_at: float = 0.0
    _claimants: set[str] = field(default_factory=set)
    _renewed_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.lease_s > 0 or not 0 < self.settle_s < self.lease_s / 3:
            raise PlannerError(f'lease_s {self.lease_s} must be > 0 and settle_s '
                               f'{self.settle_s} between 0 and lease_s / 3')
        if not self.replica_id or not self.fleet_id:
            raise PlannerError('a lease needs a fleet_id and a replica_id')

    @property
    def epoch(self) -> int:
        """The epoch this replica owns (0 when it owns nothing)."""
        return self.record.epoch if self.state == 'owner' and self.record else 0

    @property
    def is_owner(self) -> bool:
        """Whether this replica may plan and sign for the fleet now."""
        return self.state == 'owner'

    def observe(self, payload: bytes, now: float) -> None:
        """Take a lease record received from the broker (retained or live)."""
        record = LeaseRecord.parse(payload)
        if record is None or record.fleet != self.fleet_id:
            self.malformed += 1
            return
        if self.record is not None and record.epoch < self.record.epoch:
            return  # an old owner's late renewal
        if self.state == 'owner' and record.epoch == self._claim_epoch \
                and record.owner > self.replica_id:
            self._heard_at = now  # a claim that lost to us, heard late: we stay
            return
        self.record, self._heard_at = record, now
        if self.state == 'claiming' and record.epoch == self._claim_epoch:
            self._claimants.add(record.owner)
        if self.state == 'owner' and record.owner != self.replica_id and (
                record.epoch > self._claim_epoch or record.owner < self.replica_id):
            self.state = 'standby'

    def tick(self, now: float) -> bytes | None:
        """Advance the protocol; return a record to publish (retained), if any."""
        if self._started_at is None:
            self._started_at = now
        if self.state == 'standby':
            last = self._heard_at if self._heard_at is not None else self._started_at
            if now - last >= self.lease_s:
                self._claim_epoch = (self.record.epoch if self.record else 0) + 1
                self.state, self._claim_at = 'claiming', now
                self._claimants = set()  # our own claim must come back, too
                return LeaseRecord(self.fleet_id, self.replica_id, self._claim_epoch).to_json()
            return None
        if self.state == 'claiming':
            if now - self._claim_at < self.settle_s:
                return None
            if self.replica_id not in self._claimants \
                    or min(self._claimants) != self.replica_id \
                    or self.record is None or self.record.epoch > self._claim_epoch:
                self.state = 'standby'
                return None
            self.state = 'owner'
            self.record = LeaseRecord(self.fleet_id, self.replica_id, self._claim_epoch)
            self._renewed_at = now
            return self.record.to_json()
        # owner
        if self._heard_at is None or now - self._heard_at >= 2.0 * self.lease_s / 3.0:
            self.state = 'standby'  # our renewals do not come back: cut off, stop now
            return None
        if now - self._renewed_at >= self.lease_s / 3.0:
            self._renewed_at = now
            return LeaseRecord(self.fleet_id, self.replica_id, self._claim_epoch).to_json()
        return None
