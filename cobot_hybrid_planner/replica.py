"""One planner replica among several: fleet lease, shared work orders, ledger hand-over.

Several replicas of the planner serve one fleet behind one broker (mosquitto 2.x, EMQX,
HiveMQ: any MQTT 5 broker with shared subscriptions). Each replica has two MQTT clients:

* its own (client id = the replica id), always connected: it keeps the fleet lease
  (:mod:`lease`), takes work orders from the shared subscription
  ``$share/planners-<fleet>/cobot/v1/orders`` (each order reaches one replica) and forwards
  them to ``cobot/v1/planners/<fleet>/orders``, acknowledging the order to the broker only once
  the forward is accepted (manual acks: a replica killed in between loses nothing, the broker
  redelivers it), and it reads and writes the fleet's retained ledger snapshot. A forward
  answered 0x10 "no matching subscribers" (no owner has opened the fleet's session yet) is
  retried, so nothing else may subscribe that topic (enforce it with the broker's ACL);
* the fleet's session (client id ``planner-<fleet>``, persistent), connected only by the
  owner: the broker queues the fleet's telemetry, task progress, acks and forwarded orders in
  that session while ownership changes hands, and a new owner connecting with the same
  client id takes the session over (and disconnects a stale owner that still holds it).

The owner publishes its ledger (tasks, missions) as a retained snapshot after each change; a
replica that becomes owner loads it when it is newer than its own, so open tasks, tasks in
progress and mission versions carry over.

The lease runs on a thread of its own, every ``lease_s / 12``, not in the planner's loop: a
plan that takes seconds (CP-SAT on a loaded machine) must not stop the renewals, or a live
owner loses its fleet to a standby (epochs 2 and 3 while the first owner was alive, seen with
both cores busy). The planner's :meth:`FleetReplica.tick` only collects what changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from cobot_hybrid_planner.lease import FleetLease, lease_topic
from cobot_hybrid_planner.mqtt_session import apply_auth
from cobot_hybrid_protocol.broker_auth import BrokerAuth
from cobot_hybrid_protocol.topics import planner_topic, shared_orders_filter

__all__ = ['FleetReplica', 'fleet_orders_topic', 'ledger_topic']

_LOG = logging.getLogger(__name__)
_RETRY_S = 1.0


def fleet_orders_topic(fleet_id: str) -> str:
    """Return where accepted work orders wait for the fleet's owner."""
    return planner_topic(fleet_id, 'orders')


def ledger_topic(fleet_id: str) -> str:
    """Return the topic of the retained ledger snapshot of a fleet."""
    return planner_topic(fleet_id, 'ledger')


@dataclass
class _Forward:
    payload: bytes
    incoming_mid: int
    incoming_qos: int
    due: float = 0.0


@dataclass
class FleetReplica:
    """A replica's own MQTT client and its view of the fleet lease."""

    fleet_id: str
    replica_id: str
    host: str
    port: int
    lease_s: float = 6.0
    auth: BrokerAuth | None = None           # TLS files and credentials, as the sessions'
    snapshot: bytes | None = None            # the newest retained ledger snapshot heard
    forwarded: int = 0
    _records: deque[bytes] = field(default_factory=deque)
    _forwards: dict[int, _Forward] = field(default_factory=dict)   # forward mid -> order
    _retry: deque[_Forward] = field(default_factory=deque)
    _was_owner: bool = False
    _became: bool = False             # since the last tick() of the planner
    _lost: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.lease = FleetLease(self.fleet_id, self.replica_id, self.lease_s,
                                settle_s=min(1.0, self.lease_s / 4))
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.replica_id,
                                  protocol=mqtt.MQTTv5, manual_ack=True)
        apply_auth(self.client, self.auth)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    def start(self) -> None:
        """Connect in the background (retried) and run the lease on its own thread."""
        self.client.connect_async(self.host, self.port, keepalive=max(2, int(self.lease_s)))
        self.client.loop_start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_lease, name=f'lease-{self.fleet_id}',
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Disconnect (the lease then runs out and another replica takes over)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.client.disconnect()
        self.client.loop_stop()

    def _run_lease(self) -> None:
        period = self.lease_s / 12.0
        while not self._stop.wait(period):
            try:
                self.advance(time.monotonic())
            except Exception:  # noqa: BLE001 - the lease must outlive any one failure
                _LOG.exception('replica %s: lease step failed', self.replica_id)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            _LOG.error('replica %s: broker refused the connection: %s', self.replica_id, reason)
            return
        _LOG.info('replica %s: connected to the broker', self.replica_id)
        client.subscribe([(lease_topic(self.fleet_id), 1), (ledger_topic(self.fleet_id), 1),
                          (shared_orders_filter(self.fleet_id), 1)])

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        # Said, so that a standby that never took over tells whether it could have heard.
        _LOG.warning('replica %s: disconnected from the broker (%s); reconnecting',
                     self.replica_id, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        topic, payload = message.topic, bytes(message.payload)
        if topic == lease_topic(self.fleet_id):
            self._records.append(payload)
        elif topic == ledger_topic(self.fleet_id):
            self.snapshot = payload
        else:  # a work order from the shared subscription: acknowledged once forwarded
            self._forward(_Forward(payload, message.mid, message.qos))
            return
        client.ack(message.mid, message.qos)

    def _forward(self, item: _Forward) -> None:
        info = self.client.publish(fleet_orders_topic(self.fleet_id), item.payload, qos=1)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._forwards[info.mid] = item
        else:
            item.due = time.monotonic() + _RETRY_S
            self._retry.append(item)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        item = self._forwards.pop(mid, None)
        if item is None:
            return
        code = reason.value if hasattr(reason, 'value') else int(reason)
        if code < 0x80 and code != 0x10:
            self.forwarded += 1
            client.ack(item.incoming_mid, item.incoming_qos)
            _LOG.info('work order forwarded to the owner of fleet %s', self.fleet_id)
        else:  # no fleet session yet (0x10) or refused: keep it and try again
            _LOG.info('work order not taken yet (reason 0x%02x): retrying', code)
            item.due = time.monotonic() + _RETRY_S
            self._retry.append(item)

    def advance(self, now: float) -> None:
        """Take the records heard, run the lease, publish a renewal or claim, retry forwards."""
        with self._lock:
            while self._records:
                self.lease.observe(self._records.popleft(), now)
            state = self.lease.state
            record = self.lease.tick(now)
            if record is not None:
                info = self.client.publish(lease_topic(self.fleet_id), record, qos=1,
                                           retain=True)
                if self.lease.state == 'claiming' and state != 'claiming':
                    _LOG.info('replica %s claims fleet %s (%s)', self.replica_id,
                              self.fleet_id, 'sent' if info.rc == mqtt.MQTT_ERR_SUCCESS
                              else f'not sent: {mqtt.error_string(info.rc)}')
            while self._retry and self._retry[0].due <= now:
                self._forward(self._retry.popleft())
            owner, was = self.lease.is_owner, self._was_owner
            self._was_owner = owner
            if owner and not was:
                self._became, self._lost = True, False
            elif was and not owner:
                self._lost, self._became = True, False

    def tick(self, now: float) -> tuple[bool, bool]:
        """Return ``(became_owner, lost_ownership)`` since the last call (the planner's loop)."""
        self.advance(now)
        with self._lock:
            became, lost = self._became, self._lost
            self._became = self._lost = False
        return became, lost

    def publish_snapshot(self, payload: bytes) -> mqtt.MQTTMessageInfo:
        """Publish the ledger snapshot (retained) for the next owner; return its publish info."""
        return self.client.publish(ledger_topic(self.fleet_id), payload, qos=1, retain=True)
