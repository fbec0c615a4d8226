"""mTLS + per-robot ACLs with the shipped mosquitto config and test certificates."""

from __future__ import annotations

import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT, start_tls_broker, wait_for

from cobot_hybrid_bridge.durable_queue import DurableQueue
from cobot_hybrid_bridge.mqtt_link import LinkConfig, MqttLink

pytestmark = pytest.mark.broker


@pytest.fixture
def tls_broker(tmp_path: Path) -> Any:
    """The shipped TLS config on two free ports: robots' listener, cloud services' listener."""
    certs = tmp_path / 'certs'
    subprocess.run([str(ROOT / 'tools' / 'make_test_certs.sh'), str(certs), 'cobot-a',
                    'cobot-b', '--cloud', 'planner'], check=True, capture_output=True,
                   timeout=60)
    broker, cloud = start_tls_broker(tmp_path, certs)
    yield broker, cloud, certs
    broker.stop()


def client(name: str, port: int, certs: Path, with_cert: bool = True,
           client_id: str | None = None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f'{name}-probe',
                    protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(certs / 'ca.crt'),
              certfile=str(certs / f'{name}.crt') if with_cert else None,
              keyfile=str(certs / f'{name}.key') if with_cert else None,
              cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    return c


def robot_link(name: str, port: int, certs: Path, tmp_path: Path) -> tuple[MqttLink, list[str]]:
    queue = DurableQueue(tmp_path / f'{name}.db')
    link = MqttLink(LinkConfig(robot_id=name, broker_port=port, tls_ca=str(certs / 'ca.crt'),
                               tls_cert=str(certs / f'{name}.crt'),
                               tls_key=str(certs / f'{name}.key'), delivery='broker'), queue,
                    threading.Lock())
    commands: list[str] = []
    link.on_command = lambda topic, payload, retained: commands.append(topic)
    return link, commands


def planner_client(port: int, certs: Path, seen: list[str]) -> mqtt.Client:
    planner = client('planner', port, certs)
    subscribed = threading.Event()
    planner.on_message = lambda c, u, m: seen.append(m.topic)
    planner.on_subscribe = lambda *args: subscribed.set()
    planner.connect('127.0.0.1', port)
    planner.subscribe('cobot/v1/#', qos=1)
    planner.loop_start()
    assert subscribed.wait(10)
    return planner


def test_robots_are_confined_to_their_own_topics(tls_broker: Any, tmp_path: Path) -> None:
    broker, cloud, certs = tls_broker
    seen: list[str] = []
    planner = planner_client(cloud, certs, seen)
    link, commands = robot_link('cobot-a', broker.port, certs, tmp_path)
    with link.queue_lock:
        link.queue.put('cobot/v1/cobot-b/telemetry/spoof', b'pretending to be b')
        link.queue.put('cobot/v1/cobot-a/cmd/mission', b'a command to itself', retain=True)
        link.queue.put('cobot/v1/cobot-a/orders', b'not a robot topic')
        link.queue.put('cobot/v1/cobot-a/telemetry/ok', b'mine')   # sent after the others
        link.queue.commit()
    link.start()
    try:
        assert wait_for(lambda: 'cobot/v1/cobot-a/telemetry/ok' in seen, 15.0), seen
        assert wait_for(lambda: link.stats.refused >= 3, 10.0)   # PUBACK 0x87 each
        # The planner commands both robots; A hears only its own, and not its own write.
        planner.publish('cobot/v1/cobot-a/cmd/mission', b'{}', qos=1).wait_for_publish(5)
        planner.publish('cobot/v1/cobot-b/cmd/mission', b'{}', qos=1).wait_for_publish(5)
        planner.publish('cobot/v1/cobot-a/cmd/after', b'{}', qos=1).wait_for_publish(5)
        assert wait_for(lambda: 'cobot/v1/cobot-a/cmd/after' in commands, 10.0), commands
        assert commands == ['cobot/v1/cobot-a/cmd/mission', 'cobot/v1/cobot-a/cmd/after']
        assert not {'cobot/v1/cobot-b/telemetry/spoof', 'cobot/v1/cobot-a/orders'} & set(seen)
        assert seen.count('cobot/v1/cobot-a/cmd/mission') == 1   # the planner's, not A's
    finally:
        link.stop()
        link.queue.close()
    # A direct attempt by A to read B's commands gets nothing either.
    spy_seen: list[str] = []
    spy = client('cobot-a', broker.port, certs)
    subscribed = threading.Event()
    spy.on_message = lambda c, u, m: spy_seen.append(m.topic)
    spy.on_subscribe = lambda *args: subscribed.set()
    spy.connect('127.0.0.1', broker.port)
    spy.subscribe([('cobot/v1/cobot-b/#', 1), ('cobot/v1/cobot-a/cmd/#', 1)])
    spy.loop_start()
    try:
        assert subscribed.wait(10)
        planner.publish('cobot/v1/cobot-b/cmd/mission', b'{}', qos=1).wait_for_publish(5)
        planner.publish('cobot/v1/cobot-a/cmd/sentinel', b'{}', qos=1).wait_for_publish(5)
        assert wait_for(lambda: 'cobot/v1/cobot-a/cmd/sentinel' in spy_seen, 10.0), spy_seen
        assert spy_seen == ['cobot/v1/cobot-a/cmd/sentinel']
    finally:
        spy.loop_stop()
        spy.disconnect()
        planner.loop_stop()
        planner.disconnect()


def test_a_certificate_cannot_take_another_robots_client_id(tls_broker: Any,
                                                             tmp_path: Path) -> None:
    broker, cloud, certs = tls_broker
    link, _ = robot_link('cobot-b', broker.port, certs, tmp_path)
    link.start()
    try:
        assert wait_for(lambda: link.stats.connected, 15.0), link.stats.last_error
        # A's certificate asks for B's client id: the broker makes it "cobot-a" instead, so B
        # is not kicked off and its persistent session stays B's.
        intruder = client('cobot-a', broker.port, certs, client_id='cobot-b')
        connected = threading.Event()
        intruder.on_connect = lambda *args: connected.set()
        intruder.connect('127.0.0.1', broker.port)
        intruder.loop_start()
        assert connected.wait(10)
        seen: list[str] = []
        planner = planner_client(cloud, certs, seen)
        with link.queue_lock:
            link.queue.put('cobot/v1/cobot-b/telemetry/still-here', b'b')
            link.queue.commit()
        link.wake()
        assert wait_for(lambda: 'cobot/v1/cobot-b/telemetry/still-here' in seen, 10.0), seen
        assert link.stats.connected and link.stats.disconnects == 0
        intruder.loop_stop()
        intruder.disconnect()
        planner.loop_stop()
        planner.disconnect()
    finally:
        link.stop()
        link.queue.close()


def test_robot_certificates_are_refused_on_the_cloud_listener(tls_broker: Any) -> None:
    _, cloud, certs = tls_broker
    robot = client('cobot-a', cloud, certs)
    connected, closed = threading.Event(), threading.Event()
    robot.on_connect = lambda c, u, f, reason, p: (closed if reason.is_failure
                                                   else connected).set()
    robot.on_disconnect = lambda *args: closed.set()
    try:
        robot.connect('127.0.0.1', cloud)
    except (ssl.SSLError, OSError):
        return   # refused in the handshake (TLS 1.2)
    robot.loop_start()
    try:
        assert closed.wait(10), 'the broker neither refused nor closed the connection'
        assert not connected.is_set()
    finally:
        robot.loop_stop()


def test_a_client_without_a_certificate_is_refused(tls_broker: Any) -> None:
    broker, _, certs = tls_broker
    anonymous = client('cobot-a', broker.port, certs, with_cert=False)
    connected, closed = threading.Event(), threading.Event()
    anonymous.on_connect = lambda c, u, f, reason, p: (closed if reason.is_failure
                                                       else connected).set()
    anonymous.on_disconnect = lambda *args: closed.set()
    with pytest.raises((ssl.SSLError, OSError, ConnectionError)):
        anonymous.connect('127.0.0.1', broker.port)   # TLS 1.2: refused in the handshake
        anonymous.loop_start()   # TLS 1.3: the broker checks the certificate after it
        try:
            assert wait_for(lambda: connected.is_set() or closed.is_set(), 10.0), \
                'the broker neither accepted, refused nor closed the connection'
        finally:
            anonymous.loop_stop()
        if not connected.is_set():
            raise ConnectionError('refused')
