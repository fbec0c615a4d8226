"""planner_node as its own process: missions for robots that come online, shown in rviz."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

pytestmark = [pytest.mark.ros, pytest.mark.broker]

NODE = 'cobot_hybrid_planner.nodes.planner_node'
EXAMPLES = ROOT / 'config' / 'examples'


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / 'planner.pem'
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return path


def test_robot_online_gets_a_mission_shown_as_markers(make_node: Any, ros_process: Any,
                                                      tmp_path: Path,
                                                      mosquitto_broker: Any) -> None:
    from visualization_msgs.msg import MarkerArray

    node = ros_process(NODE, '--ros-args', '-p', f'site_file:={EXAMPLES / "site.yaml"}',
                       '-p', f'private_key_file:={key_file(tmp_path)}', '-p',
                       f'orders_file:={EXAMPLES / "orders.yaml"}', '-p',
                       f'broker_port:={mosquitto_broker.port}', '-p',
                       f'data_dir:={tmp_path / "cloud"}', '-p', 'plan_time_limit_s:=0.3')
    commands: list[str] = []
    robot = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='cobot-1',
                        protocol=mqtt.MQTTv5)
    robot.on_message = lambda c, u, m: commands.append(m.topic)
    robot.connect('127.0.0.1', mosquitto_broker.port)
    robot.subscribe('cobot/v1/cobot-1/cmd/#', qos=1)
    robot.publish('cobot/v1/cobot-1/status', json.dumps({'state': 'online'}).encode(), qos=1,
                  retain=True)
    robot.loop_start()
    harness = make_node('rviz')
    arrays: list[Any] = []
    harness.node.create_subscription(MarkerArray, 'fleet_missions', arrays.append, 10)
    try:
        def shown() -> bool:
            return any(m.ns == 'missions' and m.points for a in arrays for m in a.markers)
        assert harness.spin_until(shown, 30.0), node.log()
        assert 'cobot/v1/cobot-1/cmd/mission' in commands
        labels = [m.text for a in arrays for m in a.markers if m.ns == 'labels']
        assert any(text.startswith('cobot-1 v1') for text in labels)
    finally:
        robot.loop_stop()
        robot.disconnect()


def test_missing_key_exits_with_the_reason(ros_process: Any, tmp_path: Path) -> None:
    node = ros_process(NODE, '--ros-args', '-p', f'site_file:={EXAMPLES / "site.yaml"}',
                       '-p', f'private_key_file:={tmp_path / "none.pem"}')
    assert node.wait(30.0) == 2
    assert 'private_key_file' in node.log()
