"""The transport seam: what a core needs of MQTT, and an in-memory broker for core tests.

A core that talks to the broker (the planner service) takes a :class:`Transport`: it asks it
to keep a set of subscriptions while connected, to publish, and to disconnect. In production
that is a paho session (the planner's ``mqtt_session``); in core tests it is a
:class:`MemoryTransport` on a :class:`MemoryBroker`, so a test asserts exactly what was
published, with no broker, no sockets and no sleeps. The memory broker implements what the
contract relies on: ``+`` and ``#`` filters, retained messages (delivered on subscribe, cleared
by an empty retained payload), ``$share/<group>/`` subscriptions (one member per message), a
second client with the same id taking over (the first is disconnected, as mosquitto does), a
client's QoS 1 messages held while it is disconnected; delivery is synchronous, on the
publisher's thread. It does not model: persistent sessions of subscribers (what arrives while
a subscriber is away is gone), message expiry, QoS downgrade to the subscription's, in-flight
limits, or refusals (PUBACK reason codes): the shell tests with the real mosquitto cover those.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ['Message', 'MemoryBroker', 'MemoryTransport', 'Published', 'Transport',
           'topic_matches']


@dataclass(frozen=True)
class Message:
    """One message as a subscriber receives it."""

    topic: str
    payload: bytes
    qos: int = 1
    retained: bool = False
    properties: Mapping[str, str] = field(default_factory=dict)   # MQTT 5 user properties
    expiry_s: int | None = None


class Published(Protocol):
    """What ``publish`` returns: whether the broker has taken the message (a PUBACK)."""

    def is_published(self) -> bool:
        """Return True once the broker acknowledged it (QoS 1), or it was written (QoS 0)."""


class Transport(Protocol):
    """A connection to the broker, as the cores see it."""

    def connect(self, subscriptions: Sequence[tuple[str, int]],
                on_message: Callable[[Message], None]) -> None:
        """Connect in the background (retried), subscribing on every (re)connect."""

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                expiry_s: int | None = None) -> Published:
        """Publish (queued while disconnected, as the session allows)."""

    def disconnect(self) -> None:
        """Disconnect; ``connect`` may be called again."""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches an MQTT filter (``+`` one level, ``#`` the rest)."""
    if topic_filter.startswith('$share/'):
        topic_filter = topic_filter.split('/', 2)[2]
    parts, levels = topic_filter.split('/'), topic.split('/')
    if topic.startswith('$') and parts[0] in ('+', '#'):
        return False
    for index, part in enumerate(parts):
        if part == '#':
            return True
        if index >= len(levels) or (part != '+' and part != levels[index]):
            return False
    return len(parts) == len(levels)


@dataclass
class _Done:
    done: bool = True

    def is_published(self) -> bool:
        return self.done


@dataclass
class MemoryBroker:
    """An MQTT broker in memory, for core tests (one process, synchronous delivery)."""

    retained: dict[str, Message] = field(default_factory=dict)
    log: list[tuple[str, Message]] = field(default_factory=list)   # (client id, message)
    _clients: dict[str, MemoryTransport] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def transport(self, client_id: str) -> MemoryTransport:
        """Return a new client of this broker."""
        return MemoryTransport(self, client_id)

    def attach(self, client: MemoryTransport) -> None:
        """Connect a client: it receives the retained messages its filters match."""
        with self._lock:
            previous = self._clients.get(client.client_id)
            if previous is not None and previous is not client:
                previous.connected = False   # taken over: the broker drops the old session
            self._clients[client.client_id] = client
            for topic_filter, _ in client.subscriptions:
                for topic, message in sorted(self.retained.items()):
                    if not topic_filter.startswith('$share/') \
                            and topic_matches(topic_filter, topic):
                        client.deliver(message)

    def detach(self, client: MemoryTransport) -> None:
        """Disconnect a client."""
        with self._lock:
            if self._clients.get(client.client_id) is client:
                del self._clients[client.client_id]

    def route(self, sender: str, message: Message) -> None:
        """Deliver ``message`` to every matching subscriber (one per shared group)."""
        with self._lock:
            self.log.append((sender, message))
            if message.retained:
                if message.payload:
                    self.retained[message.topic] = message
                else:
                    self.retained.pop(message.topic, None)
            live = Message(message.topic, message.payload, message.qos, False,
                           message.properties, message.expiry_s)
            groups: dict[str, list[MemoryTransport]] = {}
            for client in list(self._clients.values()):
                for topic_filter, _ in client.subscriptions:
                    if not topic_matches(topic_filter, message.topic):
                        continue
                    if topic_filter.startswith('$share/'):
                        groups.setdefault(topic_filter.split('/')[1], []).append(client)
                    else:
                        client.deliver(live)
                    break
            for members in groups.values():
                members[next(self._turn) % len(members)].deliver(live)


@dataclass
class MemoryTransport:
    """A :class:`Transport` on a :class:`MemoryBroker`; ``published`` is what it sent."""

    broker: MemoryBroker
    client_id: str
    published: list[Message] = field(default_factory=list)
    subscriptions: list[tuple[str, int]] = field(default_factory=list)
    connected: bool = False
    _on_message: Callable[[Message], None] | None = None
    _queued: list[tuple[Message, _Done]] = field(default_factory=list)

    def connect(self, subscriptions: Sequence[tuple[str, int]],
                on_message: Callable[[Message], None]) -> None:
        """Connect now and subscribe (the retained messages arrive at once)."""
        self.subscriptions, self._on_message = list(subscriptions), on_message
        self.connected = True
        self.broker.attach(self)
        queued, self._queued = self._queued, []
        for message, handle in queued:    # what the session held while disconnected
            self.broker.route(self.client_id, message)
            handle.done = True

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                expiry_s: int | None = None, properties: Mapping[str, str] | None = None
                ) -> Published:
        """Send through the broker now; offline, QoS 1+ waits for the next connect.

        (As a persistent session does; QoS 0 is dropped.)
        """
        message = Message(topic, bytes(payload), qos, retain, dict(properties or {}), expiry_s)
        self.published.append(message)
        if not self.connected:
            handle = _Done(False)
            if qos > 0:
                self._queued.append((message, handle))
            return handle
        self.broker.route(self.client_id, message)
        return _Done(True)

    def disconnect(self) -> None:
        """Leave the broker."""
        self.connected = False
        self.broker.detach(self)

    def deliver(self, message: Message) -> None:
        """Hand a message to this client's callback (the broker calls it)."""
        if self._on_message is not None:
            self._on_message(message)

    def sent(self, topic_filter: str = '#') -> list[Message]:
        """Return what this client published on topics matching ``topic_filter``."""
        return [m for m in self.published if topic_matches(topic_filter, m.topic)]
