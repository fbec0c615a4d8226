"""The planner's MQTT session on paho: the production transport of the planner service.

:class:`PahoSession` is the :class:`~cobot_hybrid_protocol.transport.Transport` that
:class:`~cobot_hybrid_planner.service.PlannerService` uses outside tests.

MQTT 5 (with TLS, a client certificate and/or a password when configured: :func:`apply_auth`),
a persistent session (``clean_start`` false, one hour of session expiry: the broker
queues what arrives while the planner restarts), subscriptions renewed on every connect,
paho's network thread in the background (reconnects with its backoff), user properties handed
over as text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cobot_hybrid_protocol.broker_auth import BrokerAuth
from cobot_hybrid_protocol.transport import Message, Published

__all__ = ['PahoSession', 'apply_auth', 'publish_once']


def apply_auth(client: mqtt.Client, auth: BrokerAuth | None) -> None:
    """Give a paho client its TLS files and credentials (nothing for an open broker)."""
    if auth is None:
        return
    tls = auth.tls_arguments()
    if tls is not None:
        client.tls_set(**tls)
    if auth.username:
        client.username_pw_set(auth.username, auth.password())

_MAX_PROPERTIES = 16


class PahoSession:
    """One MQTT 5 client of the planner (the fleet session, or a single planner's)."""

    def __init__(self, client_id: str, host: str, port: int,
                 session_expiry_s: int = 3600, auth: BrokerAuth | None = None) -> None:
        self.client_id, self.host, self.port = client_id, host, port
        self.session_expiry_s = session_expiry_s
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        apply_auth(self.client, auth)
        self._subscriptions: list[tuple[str, int]] = []
        self._on_message: Callable[[Message], None] | None = None
        self.client.on_connect = self._on_connect
        self.client.on_message = self._deliver

    def connect(self, subscriptions: Sequence[tuple[str, int]],
                on_message: Callable[[Message], None]) -> None:
        """Connect in the background; subscribe on every connect."""
        self._subscriptions, self._on_message = list(subscriptions), on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        self.client.connect_async(self.host, self.port, clean_start=False, properties=props)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                expiry_s: int | None = None) -> Published:
        """Publish; ``expiry_s`` becomes the MQTT 5 message expiry."""
        props = None
        if expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = max(1, int(expiry_s))
        info: Published = self.client.publish(topic, payload, qos=qos, retain=retain,
                                              properties=props)
        return info

    def disconnect(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if self._subscriptions:
            client.subscribe(self._subscriptions)

    def _deliver(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        if self._on_message is None:
            return
        pairs = getattr(message.properties, 'UserProperty', []) or []
        self._on_message(Message(message.topic, bytes(message.payload), int(message.qos),
                                 bool(message.retain),
                                 {str(k): str(v) for k, v in pairs[:_MAX_PROPERTIES]}))


def publish_once(host: str, port: int, auth: BrokerAuth | None, client_id: str, topic: str,
                 payload: bytes, timeout_s: float = 10.0) -> int:
    """Connect, publish one QoS 1 message, wait for its PUBACK; return the reason code.

    Raises ``ConnectionError`` when the broker cannot be reached or refuses the connection
    within ``timeout_s``, ``TimeoutError`` when no PUBACK comes.
    """
    import threading

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    apply_auth(client, auth)
    connected, acked = threading.Event(), threading.Event()
    outcome: dict[str, int] = {}

    def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome['connect'] = int(reason.value)
        connected.set()

    def on_publish(c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        outcome['puback'] = int(reason.value)
        acked.set()

    client.on_connect, client.on_publish = on_connect, on_publish
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise ConnectionError(f'cannot reach the broker at {host}:{port}: {exc}') from None
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise ConnectionError(f'no CONNACK from {host}:{port} within {timeout_s} s')
        if outcome['connect'] >= 0x80:
            raise ConnectionError(f'the broker at {host}:{port} refused the connection '
                                  f'(reason 0x{outcome["connect"]:02x})')
        client.publish(topic, payload, qos=1)
        if not acked.wait(timeout_s):
            raise TimeoutError(f'no PUBACK for {topic} within {timeout_s} s')
        return outcome['puback']
    finally:
        client.disconnect()
        client.loop_stop()
