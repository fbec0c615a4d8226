"""Fleet ownership lease between planner replicas, over a simulated retained topic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.lease import FleetLease, LeaseRecord


class Broker:
    """Delivers every published record to every connected replica after ``latency_s``."""

    def __init__(self, replicas: dict[str, FleetLease], latency_s: float = 0.05) -> None:
        self.replicas = replicas
        self.latency_s = latency_s
        self.connected = set(replicas)
        self.in_flight: list[tuple[float, bytes]] = []
        self.retained: bytes | None = None
        self.max_owners = 0

    def run(self, until: float, now: float = 0.0, dt: float = 0.05) -> float:
        while now < until:
            for at, payload in [m for m in self.in_flight if m[0] <= now]:
                self.in_flight.remove((at, payload))
                self.retained = payload
                for name in self.connected:
                    self.replicas[name].observe(payload, now)
            for name, lease in self.replicas.items():
                out = lease.tick(now)
                if out is not None and name in self.connected:
                    self.in_flight.append((now + self.latency_s, out))
            owners = [n for n, lease in self.replicas.items() if lease.is_owner]
            self.max_owners = max(self.max_owners, len(owners))
            now = round(now + dt, 6)
        return now

    def owners(self) -> list[str]:
        return [n for n, lease in self.replicas.items() if lease.is_owner]


def replicas(*names: str, lease_s: float = 3.0) -> dict[str, FleetLease]:
    return {n: FleetLease('cell-a', n, lease_s=lease_s, settle_s=0.5) for n in names}


def test_replicas_starting_together_agree_on_one_owner() -> None:
    broker = Broker(replicas('planner-b', 'planner-a', 'planner-c'))
    broker.run(10.0)
    assert broker.owners() == ['planner-a']
    assert broker.max_owners == 1
    assert LeaseRecord.parse(broker.retained or b'') == LeaseRecord('cell-a', 'planner-a', 1)


def test_a_dead_owner_is_replaced_with_a_higher_epoch() -> None:
    group = replicas('planner-a', 'planner-b')
    broker = Broker(group)
    now = broker.run(10.0)
    assert broker.owners() == ['planner-a']
    del broker.replicas['planner-a']          # killed: no renewals any more
    broker.connected.discard('planner-a')
    broker.run(15.0, now)
    assert broker.owners() == ['planner-b'] and group['planner-b'].epoch == 2


def test_an_owner_cut_off_from_the_broker_stops_before_another_takes_over() -> None:
    group = replicas('planner-a', 'planner-b')
    broker = Broker(group)
    now = broker.run(10.0)
    broker.connected.discard('planner-a')     # a partition: it hears nothing, says nothing
    now = broker.run(now + 2.1, now)
    assert broker.owners() == []               # a stepped down at 2/3 lease; b still waits
    broker.run(now + 5.0, now)
    assert broker.owners() == ['planner-b'] and broker.max_owners == 1
    # a comes back and hears epoch 2: it stays a standby.
    broker.connected.add('planner-a')
    broker.run(30.0, now + 5.0)
    assert broker.owners() == ['planner-b']


def test_a_late_replica_takes_the_retained_record_and_waits() -> None:
    group = replicas('planner-b')
    broker = Broker(group)
    now = broker.run(10.0)
    late = FleetLease('cell-a', 'planner-a', lease_s=3.0, settle_s=0.5)
    late.observe(broker.retained or b'', now)  # the retained record on subscribe
    broker.replicas['planner-a'] = late
    broker.connected.add('planner-a')
    broker.run(30.0, now)
    assert broker.owners() == ['planner-b']    # a lower id does not steal a live lease


@settings(max_examples=40, deadline=None)
@given(latency=st.floats(0.0, 0.3), starts=st.lists(st.floats(0.0, 5.0), min_size=2,
                                                     max_size=4))
def test_never_two_owners_whatever_the_latency_and_start_times(latency: float,
                                                               starts: list[float]) -> None:
    names = [f'planner-{i}' for i in range(len(starts))]
    group = replicas(*names)
    broker = Broker({}, latency)
    now = 0.0
    for name, start in sorted(zip(names, starts, strict=True), key=lambda p: p[1]):
        now = broker.run(start, now)
        broker.replicas[name] = group[name]
        broker.connected.add(name)
        if broker.retained:
            group[name].observe(broker.retained, now)
    broker.run(now + 15.0, now)
    assert broker.max_owners == 1 and len(broker.owners()) == 1


def test_bad_records_and_settings() -> None:
    lease = FleetLease('cell-a', 'p1')
    for payload in (b'', b'{"fleet": "cell-a"}', b'{"fleet": "cell-b", "owner": "x", '
                    b'"epoch": 1}', b'{"fleet": "cell-a", "owner": "x", "epoch": 0}'):
        lease.observe(payload, 0.0)
    assert lease.malformed == 4 and lease.record is None
    with pytest.raises(PlannerError, match='settle_s'):
        FleetLease('cell-a', 'p1', lease_s=3.0, settle_s=2.0)
