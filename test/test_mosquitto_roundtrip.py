"""A message round trip through a real mosquitto broker started by the fixture."""

from __future__ import annotations

import queue
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = pytest.mark.broker


def _client(name: str, broker: Any) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name,
                         protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    return client


def test_qos1_round_trip_through_real_broker(mosquitto_broker: Any) -> None:
    inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    subscribed = queue.Queue[int]()
    sub = _client('sub', mosquitto_broker)
    sub.on_message = lambda _c, _u, msg: inbox.put(msg)
    sub.on_subscribe = lambda *_args: subscribed.put(1)
    sub.subscribe('cobot/v1/robot1/#', qos=1)
    subscribed.get(timeout=10)
    pub = _client('pub', mosquitto_broker)
    payload = bytes(range(256)) * 4
    info = pub.publish('cobot/v1/robot1/telemetry', payload, qos=1)
    info.wait_for_publish(timeout=10)
    assert info.rc == mqtt.MQTT_ERR_SUCCESS
    msg = inbox.get(timeout=10)
    assert msg.topic == 'cobot/v1/robot1/telemetry'
    assert msg.payload == payload and msg.qos == 1
    for client in (pub, sub):
        client.loop_stop()
        client.disconnect()


def test_broker_restart_keeps_retained_message(mosquitto_broker: Any) -> None:
    pub = _client('pub', mosquitto_broker)
    pub.publish('cobot/v1/robot1/status', b'online', qos=1, retain=True).wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()
    mosquitto_broker.restart()  # SIGTERM: mosquitto writes its persistence DB on exit
    inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    sub = _client('sub', mosquitto_broker)
    sub.on_message = lambda _c, _u, msg: inbox.put(msg)
    sub.subscribe('cobot/v1/robot1/status', qos=1)
    msg = inbox.get(timeout=10)
    assert msg.payload == b'online' and msg.retain
    sub.loop_stop()
    sub.disconnect()
