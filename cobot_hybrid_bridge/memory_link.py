"""A :class:`~cobot_hybrid_bridge.link.Link` onto an in-memory broker, for core tests.

It drains the outbox synchronously on :meth:`MemoryLink.wake` (the caller's thread: a test
is deterministic), publishes with the same topics, payloads, QoS, retain flag and MQTT 5 user
properties (``robot_id``, ``seq``, ``stamp``) as the real link, announces ``online``
(retained) on start and ``offline`` on stop, and acknowledges the queue by the same rule:
``delivery: broker`` as soon as the broker routed a QoS 1 message; ``delivery: cloud`` when a
valid ``cobot/v1/<robot_id>/delivered`` message names its seq, with at most ``cloud_window``
messages awaiting that (the rest wait in the outbox, as with the real link). Not modelled:
re-sending what the cloud has not acknowledged after ``cloud_ack_timeout_s``, the in-flight
window, refusals by reason code, reconnects: ``test_mqtt_link``/``test_delivery`` cover them
against mosquitto.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from cobot_hybrid_bridge.durable_queue import DurableQueue
from cobot_hybrid_bridge.link import CommandHandler, LinkFactory
from cobot_hybrid_bridge.mqtt_link import LinkConfig, LinkStats
from cobot_hybrid_protocol.delivery import parse_delivered
from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.status import status_payload
from cobot_hybrid_protocol.topics import (
    blob_filter,
    commands_filter,
    delivered_topic,
    status_topic,
)
from cobot_hybrid_protocol.transport import MemoryBroker, MemoryTransport, Message

__all__ = ['MemoryLink', 'memory_link_factory']

_BATCH = 1000


@dataclass
class MemoryLink:
    """The outbox drained into a :class:`MemoryBroker`."""

    cfg: LinkConfig
    queue: DurableQueue
    lock: threading.Lock
    on_command: CommandHandler
    transport: MemoryTransport
    stats: LinkStats = field(default_factory=LinkStats)
    _awaiting: set[int] = field(default_factory=set)

    def start(self) -> None:
        """Connect, say online, subscribe to commands (and acknowledgements), send."""
        self.transport.connect([(commands_filter(self.cfg.robot_id), 1),
                                (blob_filter(self.cfg.robot_id), 1),
                                (delivered_topic(self.cfg.robot_id), 1)], self._on_message)
        self.transport.publish(status_topic(self.cfg.robot_id),
                               status_payload('online', time.time()), qos=1, retain=True)
        self.stats.connected, self.stats.connects = True, self.stats.connects + 1
        self.wake()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say offline and leave the broker."""
        if self.stats.connected:
            self.transport.publish(status_topic(self.cfg.robot_id),
                                   status_payload('offline', time.time()), qos=1, retain=True)
        self.transport.disconnect()
        self.stats.connected = False

    def wake(self) -> None:
        """Publish everything committed and not yet sent, now."""
        if not self.stats.connected:
            return
        cloud = self.cfg.delivery == 'cloud'
        while True:
            room = self.cfg.cloud_window - len(self._awaiting) if cloud else _BATCH
            if room <= 0:
                return
            batch = self.queue.peek(min(room, _BATCH), exclude=sorted(self._awaiting))
            if not batch:
                return
            delivered = []
            for message in batch:
                properties = {'robot_id': self.cfg.robot_id, 'seq': str(message.seq),
                              'stamp': f'{time.time():.6f}'} \
                    if self.cfg.protocol == 'mqtt5' else None
                self.transport.publish(message.topic, message.payload, qos=message.qos,
                                       retain=message.retain, properties=properties)
                self.stats.published += 1
                if cloud and message.qos > 0:
                    self._awaiting.add(message.seq)
                else:
                    delivered.append(message.seq)
            if delivered:
                self.queue.mark_delivered(delivered)
                self.stats.acked += len(delivered)
            self.stats.awaiting_cloud = len(self._awaiting)

    def _on_message(self, message: Message) -> None:
        if message.topic == delivered_topic(self.cfg.robot_id):
            try:
                ranges = parse_delivered(message.payload, self.cfg.robot_id)
            except PayloadError:
                self.stats.bad_delivery_acks += 1
                return
            done = [s for s in self._awaiting if any(a <= s <= b for a, b in ranges)]
            self._awaiting.difference_update(done)
            if done:
                self.queue.mark_delivered(done)
                self.stats.cloud_acked += len(done)
            self.stats.awaiting_cloud = len(self._awaiting)
            self.wake()   # room in the window again
            return
        self.on_command(message.topic, message.payload, message.retained)


def memory_link_factory(broker: MemoryBroker) -> LinkFactory:
    """Return a link factory for :class:`EdgeBridge` that connects it to ``broker``."""
    def make(cfg: LinkConfig, queue: DurableQueue, lock: threading.Lock,
             on_command: CommandHandler) -> MemoryLink:
        return MemoryLink(cfg, queue, lock, on_command, broker.transport(cfg.robot_id))
    return make
