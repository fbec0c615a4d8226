"""Each broker role can do exactly what it should: the shipped mosquitto TLS config, for real.

Roles: a robot (its own prefix, not its own ``cmd/``), the planner (robots' uplink, commands,
delivery acknowledgements, its replicas' topics), the order producer (``cobot/v1/orders``
only), the observer (robots' reports, read only), the offload worker (robots' events and
telemetry, also through its group's shared subscription; its group's topics; advisories to
robots and no other command) and the history recorder (robots' reports, read only). Every
row of the matrix is checked: a write by its PUBACK reason code (0x87 refused) and by whether
a reader allowed to read the topic received it; a read by whether the message, published by
a role allowed to write it, reached a subscriber of the topic filter (a wildcard or shared
filter gets the writer's own topic).
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT, start_tls_broker, wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

pytestmark = pytest.mark.broker

ROBOTS = ('cobot-a', 'cobot-b')
CLOUD = ('planner', 'orders', 'observer', 'worker', 'history')
NOT_AUTHORIZED = 0x87

#: (role, topic, allowed) for writes.
WRITES = [
    ('cobot-a', 'cobot/v1/cobot-a/status', True),
    ('cobot-a', 'cobot/v1/cobot-a/state', True),
    ('cobot-a', 'cobot/v1/cobot-a/telemetry/bridge', True),
    ('cobot-a', 'cobot/v1/cobot-a/events/mission_ack', True),
    ('cobot-a', 'cobot/v1/cobot-b/telemetry/bridge', False),      # another robot's prefix
    ('cobot-a', 'cobot/v1/cobot-a/cmd/mission', False),           # its own commands
    ('cobot-a', 'cobot/v1/cobot-a/delivered', False),
    ('cobot-a', 'cobot/v1/cobot-a/events/blob_request', True),
    ('cobot-a', 'cobot/v1/cobot-a/blob/' + 'a' * 64 + '/0', False),   # chunks come from the cloud
    ('cobot-a', 'cobot/v1/cobot-a/cmd/model', False),
    ('cobot-a', 'cobot/v1/orders', False),
    ('cobot-a', 'cobot/v1/planners/site-1/lease', False),
    ('planner', 'cobot/v1/cobot-a/cmd/mission', True),
    ('planner', 'cobot/v1/cobot-a/delivered', True),
    ('planner', 'cobot/v1/cobot-a/cmd/model', True),
    ('planner', 'cobot/v1/cobot-a/blob/' + 'a' * 64 + '/0', True),
    ('planner', 'cobot/v1/planners/site-1/lease', True),
    ('planner', 'cobot/v1/planners/site-1/ledger', True),
    ('planner', 'cobot/v1/planners/site-1/orders', True),
    ('planner', 'cobot/v1/cobot-a/telemetry/bridge', False),      # no robot uplink
    ('planner', 'cobot/v1/cobot-a/status', False),
    ('planner', 'cobot/v1/orders', False),
    ('orders', 'cobot/v1/orders', True),
    ('orders', 'cobot/v1/cobot-a/cmd/mission', False),
    ('orders', 'cobot/v1/planners/site-1/orders', False),
    ('orders', 'cobot/v1/cobot-a/telemetry/bridge', False),
    ('observer', 'cobot/v1/cobot-a/telemetry/bridge', False),
    ('observer', 'cobot/v1/cobot-a/cmd/mission', False),
    ('observer', 'cobot/v1/orders', False),
    ('observer', 'cobot/v1/planners/site-1/lease', False),
    ('worker', 'cobot/v1/workers/site-1/status', True),
    ('worker', 'cobot/v1/cobot-a/cmd/advisory', True),
    ('worker', 'cobot/v1/cobot-a/cmd/mission', False),             # advisories only
    ('worker', 'cobot/v1/cobot-a/cmd/model', False),
    ('worker', 'cobot/v1/cobot-a/events/stop_snapshot', False),    # no robot uplink
    ('worker', 'cobot/v1/cobot-a/delivered', False),
    ('worker', 'cobot/v1/planners/site-1/lease', False),
    ('worker', 'cobot/v1/cobot-a/telemetry/bridge', False),
    ('worker', 'cobot/v1/cobot-a/status', False),
    ('worker', 'cobot/v1/cobot-a/blob/' + 'a' * 64 + '/0', False),
    ('worker', 'cobot/v1/orders', False),
    ('history', 'cobot/v1/cobot-a/telemetry/bridge', False),       # it writes nothing
    ('history', 'cobot/v1/workers/site-1/status', False),
    ('history', 'cobot/v1/cobot-a/cmd/advisory', False),
    ('history', 'cobot/v1/cobot-a/status', False),
    ('history', 'cobot/v1/cobot-a/events/stop_snapshot', False),
    ('history', 'cobot/v1/cobot-a/cmd/mission', False),
    ('history', 'cobot/v1/cobot-a/delivered', False),
    ('history', 'cobot/v1/orders', False),
    ('history', 'cobot/v1/planners/site-1/lease', False),
    ('cobot-a', 'cobot/v1/cobot-a/cmd/advisory', False),          # not its own advisories
    ('cobot-a', 'cobot/v1/workers/site-1/status', False),
]
#: (reader, topic, writer, allowed) for reads.
READS = [
    ('planner', 'cobot/v1/cobot-a/telemetry/bridge', 'cobot-a', True),
    ('planner', 'cobot/v1/cobot-a/events/task_progress', 'cobot-a', True),
    ('planner', 'cobot/v1/orders', 'orders', True),
    ('planner', '$share/planners-site-1/cobot/v1/orders', 'orders', True),
    ('planner', 'cobot/v1/planners/site-1/lease', 'planner', True),
    ('observer', 'cobot/v1/cobot-a/status', 'cobot-a', True),
    ('observer', 'cobot/v1/cobot-a/state', 'cobot-a', True),
    ('observer', 'cobot/v1/cobot-a/telemetry/bridge', 'cobot-a', True),
    ('observer', 'cobot/v1/cobot-a/events/mission_ack', 'cobot-a', True),
    ('observer', 'cobot/v1/cobot-a/cmd/mission', 'planner', False),
    ('observer', 'cobot/v1/cobot-a/delivered', 'planner', False),
    ('observer', 'cobot/v1/orders', 'orders', False),
    ('observer', 'cobot/v1/planners/site-1/ledger', 'planner', False),
    ('orders', 'cobot/v1/cobot-a/telemetry/bridge', 'cobot-a', False),
    ('orders', 'cobot/v1/orders', 'orders', False),
    ('cobot-b', 'cobot/v1/cobot-b/cmd/mission', 'planner', True),
    ('cobot-b', 'cobot/v1/cobot-b/delivered', 'planner', True),
    ('cobot-b', 'cobot/v1/cobot-b/blob/' + 'a' * 64 + '/0', 'planner', True),
    ('cobot-b', 'cobot/v1/cobot-a/blob/' + 'a' * 64 + '/0', 'planner', False),   # another's
    ('observer', 'cobot/v1/cobot-a/blob/' + 'a' * 64 + '/0', 'planner', False),
    ('cobot-b', 'cobot/v1/cobot-a/cmd/mission', 'planner', False),   # another robot's
    ('cobot-b', 'cobot/v1/cobot-a/telemetry/bridge', 'cobot-a', False),
    ('cobot-b', 'cobot/v1/orders', 'orders', False),
    ('worker', '$share/workers-site-1/cobot/v1/+/events/stop_snapshot', 'cobot-a', True),
    ('worker', 'cobot/v1/cobot-a/telemetry/bridge', 'cobot-a', True),
    ('worker', 'cobot/v1/cobot-a/events/task_progress', 'cobot-a', True),
    ('worker', 'cobot/v1/workers/site-1/status', 'worker', True),   # its group's status
    ('worker', 'cobot/v1/cobot-a/status', 'cobot-a', False),
    ('worker', 'cobot/v1/cobot-a/cmd/advisory', 'worker', False),   # writes them, reads none
    ('worker', 'cobot/v1/cobot-a/cmd/mission', 'planner', False),
    ('worker', 'cobot/v1/planners/site-1/ledger', 'planner', False),
    ('worker', 'cobot/v1/orders', 'orders', False),
    ('history', 'cobot/v1/cobot-a/status', 'cobot-a', True),
    ('history', 'cobot/v1/cobot-a/events/task_progress', 'cobot-a', True),
    ('history', 'cobot/v1/+/status', 'cobot-a', True),              # the recorder's own
    ('history', 'cobot/v1/+/telemetry/#', 'cobot-a', True),         # three filters
    ('history', 'cobot/v1/+/events/#', 'cobot-a', True),
    ('history', 'cobot/v1/cobot-a/state', 'cobot-a', False),
    ('history', 'cobot/v1/cobot-a/cmd/advisory', 'worker', False),
    ('history', 'cobot/v1/workers/site-1/status', 'worker', False),
    ('history', 'cobot/v1/cobot-a/cmd/mission', 'planner', False),
    ('history', 'cobot/v1/planners/site-1/lease', 'planner', False),
]


@dataclass
class Role:
    """One connected client of a role: what it received and its PUBACK reason codes."""

    name: str
    client: mqtt.Client
    received: list[tuple[str, bytes]] = field(default_factory=list)
    acks: dict[int, int] = field(default_factory=dict)   # mid -> reason code
    subacks: dict[int, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def got(self, topic: str, payload: bytes) -> bool:
        with self.lock:
            return (topic, payload) in self.received


def connect(name: str, port: int, certs: Path) -> Role:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f'{name}-matrix',
                         protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(certs / 'ca.crt'), certfile=str(certs / f'{name}.crt'),
                   keyfile=str(certs / f'{name}.key'), cert_reqs=ssl.CERT_REQUIRED,
                   tls_version=ssl.PROTOCOL_TLS_CLIENT)
    role = Role(name, client)
    connected = threading.Event()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        with role.lock:
            role.received.append((msg.topic, bytes(msg.payload)))

    def on_publish(c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        with role.lock:
            role.acks[mid] = int(reason.value)

    def on_subscribe(c: Any, u: Any, mid: int, reasons: Any, props: Any) -> None:
        with role.lock:
            role.subacks[mid] = [int(r.value) for r in reasons]

    client.on_connect = lambda c, u, f, reason, p: connected.set()
    client.on_message, client.on_publish, client.on_subscribe = on_message, on_publish, \
        on_subscribe
    client.connect('127.0.0.1', port, clean_start=True)
    client.loop_start()
    assert connected.wait(10), f'{name} did not connect'
    return role


def publish(role: Role, topic: str, payload: bytes) -> int:
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 60
    info = role.client.publish(topic, payload, qos=1, properties=props)
    assert wait_for(lambda: info.mid in role.acks, 10.0), f'no PUBACK for {role.name} {topic}'
    return role.acks[info.mid]


@pytest.fixture
def roles(tmp_path: Path) -> Any:
    certs = tmp_path / 'certs'
    subprocess.run([str(ROOT / 'tools' / 'make_test_certs.sh'), str(certs), *ROBOTS,
                    '--cloud', *CLOUD], check=True, capture_output=True, timeout=60)
    broker, cloud_port = start_tls_broker(tmp_path / 'broker', certs)
    connected = {name: connect(name, broker.port, certs) for name in ROBOTS}
    connected |= {name: connect(name, cloud_port, certs) for name in CLOUD}
    yield connected
    for role in connected.values():
        role.client.loop_stop()
        role.client.disconnect()
    broker.stop()


def subscribe(role: Role, topic: str) -> list[int]:
    _, mid = role.client.subscribe(topic, qos=1)
    assert wait_for(lambda: mid in role.subacks, 10.0), f'no SUBACK for {role.name} {topic}'
    return role.subacks[mid]


def test_each_role_can_do_exactly_what_it_should(roles: dict[str, Role]) -> None:
    planner = roles['planner']
    # Witnesses of the writes: the planner reads everything but planners' own echoes come
    # back too; a robot's commands are witnessed by that robot.
    assert subscribe(planner, 'cobot/v1/#') == [1]
    assert subscribe(roles['cobot-a'], 'cobot/v1/cobot-a/cmd/#') == [1]
    refused_subscriptions = {}
    for index, (reader, topic, _, allowed) in enumerate(READS):
        codes = subscribe(roles[reader], topic)
        refused_subscriptions[index] = codes[0] >= 0x80
        if allowed:
            assert not refused_subscriptions[index], (reader, topic, codes)
    time.sleep(0.2)   # let the broker settle the subscriptions before anything is sent

    wrong: list[str] = []
    write_payloads = {}
    for index, (role, topic, allowed) in enumerate(WRITES):
        payload = f'write-{index}'.encode()
        write_payloads[index] = payload
        code = publish(roles[role], topic, payload)
        if allowed and code >= 0x80:
            wrong.append(f'{role} could not write {topic} (PUBACK 0x{code:02x})')
        if not allowed and code != NOT_AUTHORIZED:
            wrong.append(f'{role} wrote {topic} (PUBACK 0x{code:02x}, expected 0x87)')
    read_payloads = {}
    for index, (_, topic, writer, _) in enumerate(READS):
        plain = topic.split('/', 2)[2] if topic.startswith('$share/') else topic
        plain = plain.replace('/+/', f'/{writer}/')   # a wildcard read: the writer's topic
        plain = plain.removesuffix('/#') + ('/x' if plain.endswith('/#') else '')
        payload = f'read-{index}'.encode()
        read_payloads[index] = (plain, payload)
        assert publish(roles[writer], plain, payload) < 0x80, (writer, plain)

    def witness(role: str, topic: str) -> Role:
        if topic.startswith('cobot/v1/cobot-a/cmd/'):
            return roles['cobot-a']
        return planner

    def allowed_arrived() -> bool:
        writes = all(witness(r, t).got(t, write_payloads[i])
                     for i, (r, t, ok) in enumerate(WRITES) if ok)
        reads = all(roles[reader].got(*read_payloads[i])
                    for i, (reader, _, _, ok) in enumerate(READS) if ok)
        return writes and reads
    assert wait_for(allowed_arrived, 15.0), 'an allowed message did not arrive'
    time.sleep(1.0)   # the subject: time for a refused message to arrive, which must not come
    for index, (role, topic, allowed) in enumerate(WRITES):
        if not allowed and witness(role, topic).got(topic, write_payloads[index]):
            wrong.append(f'{role} wrote {topic}: the witness received it')
    for index, (reader, topic, writer, allowed) in enumerate(READS):
        if not allowed and roles[reader].got(*read_payloads[index]):
            wrong.append(f'{reader} read {topic} (written by {writer})')
    assert wrong == [], '\n'.join(wrong)
    print(f'\nrole matrix: {len(WRITES)} writes and {len(READS)} reads checked, '
          f'{sum(refused_subscriptions.values())} subscriptions refused at SUBACK')


@pytest.mark.ros
@pytest.mark.parametrize('fleet', ['', 'site-1'])
def test_the_planner_runs_against_the_shipped_tls_config_end_to_end(
        make_node: Any, ros_process: Any, tmp_path: Path, fleet: str) -> None:
    """An order in (order producer), a signed mission out (planner), the ack back (robot).

    Every client on mTLS with its own role: ``cobot-hybrid serve`` with ``--tls-*`` on the
    cloud listener (alone, and as a replica of a fleet: lease, ledger snapshot and order
    forwarding under ``cobot/v1/planners/``, orders through a shared subscription), a real
    ``bridge_node`` on the robots' listener, and the observer watching.
    """
    import json

    import yaml
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )
    from test_planner_e2e import ORDER, SITE

    certs = tmp_path / 'certs'
    subprocess.run([str(ROOT / 'tools' / 'make_test_certs.sh'), str(certs), 'cobot-a',
                    '--cloud', *CLOUD], check=True, capture_output=True, timeout=60)
    broker, cloud_port = start_tls_broker(tmp_path / 'broker', certs)
    key = Ed25519PrivateKey.generate()
    (tmp_path / 'planner.pem').write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                             NoEncryption()))
    (tmp_path / 'planner.pub').write_bytes(key.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / 'site.yaml').write_text(yaml.safe_dump(SITE))
    tls = {name: [str(certs / 'ca.crt'), str(certs / f'{name}.crt'), str(certs / f'{name}.key')]
           for name in ('cobot-a', 'planner')}
    params = tmp_path / 'bridge.yaml'
    params.write_text(yaml.safe_dump({'bridge_node': {'ros__parameters': {
        'robot_id': 'cobot-a', 'broker_port': broker.port, 'data_dir': str(tmp_path / 'robot'),
        'cloud_public_keys': [f'planner={tmp_path / "planner.pub"}'],
        'tls_ca': tls['cobot-a'][0], 'tls_cert': tls['cobot-a'][1],
        'tls_key': tls['cobot-a'][2]}}}))
    observer = connect('observer', cloud_port, certs)
    acks: list[dict[str, Any]] = []
    observer.client.on_message = lambda c, u, m: acks.append(json.loads(m.payload))
    assert subscribe(observer, 'cobot/v1/cobot-a/events/mission_ack') == [1]
    try:
        bridge = ros_process('cobot_hybrid_bridge.nodes.bridge_node', '--ros-args',
                             '--params-file', str(params))
        planner = ros_process('cobot_hybrid_cli', 'serve', '--site', str(tmp_path / 'site.yaml'),
                              '--key', str(tmp_path / 'planner.pem'), '--port', str(cloud_port),
                              '--data-dir', str(tmp_path / 'cloud'), '--time-limit', '0.3',
                              '--tls-ca', tls['planner'][0], '--tls-cert', tls['planner'][1],
                              '--tls-key', tls['planner'][2], '--fleet', fleet,
                              '--lease-s', '2.0', name='planner')
        harness = make_node('robot_side')
        assert harness.spin_until(lambda: 'serving' in planner.log(), 30.0), planner.log()
        (tmp_path / 'order.json').write_text(json.dumps(ORDER))

        def submit(role: str) -> Any:   # the order producer's own command line
            return subprocess.run(
                [sys.executable, '-m', 'cobot_hybrid_cli', 'submit', str(tmp_path / 'order.json'),
                 '--site', str(tmp_path / 'site.yaml'), '--port', str(cloud_port),
                 '--tls-ca', str(certs / 'ca.crt'), '--tls-cert', str(certs / f'{role}.crt'),
                 '--tls-key', str(certs / f'{role}.key')],
                capture_output=True, text=True, timeout=60, check=False)
        refused = submit('observer')
        assert refused.returncode == 2 and '0x87 not authorized' in refused.stderr, refused

        def accepted() -> bool:   # the ack, in the uplink envelope the bridge sends
            return any(ack.get('data', {}).get('status') == 'accepted' for ack in acks)
        # The robot must be online (its status heard) before the plan has it; submit again
        # until a mission comes (an order is idempotent by its id).
        deadline = time.monotonic() + 60.0
        while not accepted() and time.monotonic() < deadline:
            result = submit('orders')
            assert result.returncode == 0, result
            harness.spin_until(accepted, 5.0)
        assert accepted(), (acks, planner.log()[-3000:], bridge.log()[-3000:])

        def planner_heard_it() -> bool:   # the ack back in the planner's own ledger
            import sqlite3

            path = tmp_path / 'cloud' / 'ledger.db'
            if not path.is_file():
                return False
            db = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
            try:
                rows = db.execute('SELECT acked FROM missions WHERE robot_id = ?',
                                  ('cobot-a',)).fetchall()
            except sqlite3.Error:
                return False
            finally:
                db.close()
            return rows == [('accepted',)]
        assert harness.spin_until(planner_heard_it, 20.0), planner.log()[-3000:]
    finally:
        observer.client.loop_stop()
        observer.client.disconnect()
        broker.stop()
