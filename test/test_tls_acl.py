"""mTLS + per-robot ACLs with the shipped mosquitto config and test certificates."""

from __future__ import annotations

import os
import pwd
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT, MosquittoBroker, free_port
from test_mqtt_link import wait_for

from cobot_hybrid_bridge.durable_queue import DurableQueue
from cobot_hybrid_bridge.mqtt_link import LinkConfig, MqttLink

pytestmark = pytest.mark.broker


@pytest.fixture
def tls_broker(tmp_path: Path) -> Any:
    certs = tmp_path / 'certs'
    subprocess.run([str(ROOT / 'tools' / 'make_test_certs.sh'), str(certs), 'cobot-a',
                    'cobot-b', 'planner'], check=True, capture_output=True, timeout=60)
    port = free_port()
    conf = (ROOT / 'config' / 'mosquitto' / 'cobot_hybrid_tls.conf').read_text()
    conf = conf.replace('/etc/cobot_hybrid/certs', str(certs))
    conf = conf.replace('/etc/cobot_hybrid/mosquitto/cobot_hybrid.acl',
                        str(ROOT / 'config' / 'mosquitto' / 'cobot_hybrid.acl'))
    conf = conf.replace('listener 8883 127.0.0.1', f'listener {port} 127.0.0.1')
    conf = conf.replace('persistence_location /var/lib/mosquitto/',
                        f'persistence_location {tmp_path}/')
    conf += (f'user {pwd.getpwuid(os.getuid()).pw_name}\n'
             f'log_dest file {tmp_path}/mosquitto.log\n')
    config_path = tmp_path / 'mosquitto.conf'
    config_path.write_text(conf)
    broker = MosquittoBroker(port=port, data_dir=tmp_path, config_path=config_path)
    broker.start()
    yield broker, certs
    broker.stop()


def client(name: str, port: int, certs: Path, with_cert: bool = True) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f'{name}-probe',
                    protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(certs / 'ca.crt'),
              certfile=str(certs / f'{name}.crt') if with_cert else None,
              keyfile=str(certs / f'{name}.key') if with_cert else None,
              cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    return c


def test_robots_are_confined_to_their_own_topics(tls_broker: Any, tmp_path: Path) -> None:
    broker, certs = tls_broker
    seen: list[str] = []
    planner = client('planner', broker.port, certs)
    planner.on_message = lambda c, u, m: seen.append(m.topic)
    planner.connect('127.0.0.1', broker.port)
    planner.subscribe('cobot/v1/#', qos=1)
    planner.loop_start()
    # Robot A through the bridge's own link, with its certificate.
    queue = DurableQueue(tmp_path / 'a.db')
    link = MqttLink(LinkConfig(robot_id='cobot-a', port=broker.port,
                               tls_ca=str(certs / 'ca.crt'), tls_cert=str(certs / 'cobot-a.crt'),
                               tls_key=str(certs / 'cobot-a.key')), queue, threading.Lock())
    commands: list[str] = []
    link.on_command = lambda topic, payload: commands.append(topic)
    with link.queue_lock:
        queue.put('cobot/v1/cobot-a/telemetry/ok', b'mine')
        queue.put('cobot/v1/cobot-b/telemetry/spoof', b'pretending to be b')
        queue.commit()
    link.start()
    try:
        assert wait_for(lambda: 'cobot/v1/cobot-a/telemetry/ok' in seen, 15.0), seen
        # The planner commands both robots; A must only hear its own.
        time.sleep(0.5)
        planner.publish('cobot/v1/cobot-a/cmd/mission', b'{}', qos=1).wait_for_publish(5)
        planner.publish('cobot/v1/cobot-b/cmd/mission', b'{}', qos=1).wait_for_publish(5)
        assert wait_for(lambda: commands == ['cobot/v1/cobot-a/cmd/mission'], 10.0), commands
        # A direct attempt by A to read B's commands gets nothing either.
        spy_seen: list[str] = []
        spy = client('cobot-a', broker.port, certs)
        spy.on_message = lambda c, u, m: spy_seen.append(m.topic)
        spy.connect('127.0.0.1', broker.port)
        spy.subscribe('cobot/v1/cobot-b/#', qos=1)
        spy.loop_start()
        time.sleep(0.5)
        planner.publish('cobot/v1/cobot-b/cmd/mission', b'{}', qos=1).wait_for_publish(5)
        time.sleep(1.0)
        spy.loop_stop()
        spy.disconnect()
        assert spy_seen == []
        assert 'cobot/v1/cobot-b/telemetry/spoof' not in seen
        assert link.stats.refused >= 1  # PUBACK 0x87 (not authorised): retried, then dropped
    finally:
        link.stop()
        planner.loop_stop()
        planner.disconnect()
        queue.close()


def test_a_client_without_a_certificate_is_refused(tls_broker: Any) -> None:
    broker, certs = tls_broker
    anonymous = client('cobot-a', broker.port, certs, with_cert=False)
    with pytest.raises((ssl.SSLError, OSError, ConnectionError)):
        anonymous.connect('127.0.0.1', broker.port)
        anonymous.loop_start()
        time.sleep(0.5)
        if not anonymous.is_connected():
            raise ConnectionError('refused')
