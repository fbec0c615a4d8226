"""Planner -> broker -> bridge_node -> robot ROS topic; the ack and task progress come back.

The robot side is bridge_node plus mission_executor_node, each its own process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cobot_hybrid_planner.orders import ORDERS_SCHEMA
from cobot_hybrid_planner.service import PlannerConfig, PlannerService
from cobot_hybrid_planner.site import parse_site

pytestmark = [pytest.mark.ros, pytest.mark.broker]

SITE = {'stations': {'press': {'x': 0, 'y': 0}, 'tray': {'x': 3, 'y': 4}},
        'robots': {'cobot-a': {'capabilities': ['pick', 'place'], 'start': 'tray'}}}
ORDER = {'schema': ORDERS_SCHEMA, 'order_id': 'o-1', 'tasks': [
    {'task_id': 'unload', 'type': 'pick', 'station': 'press', 'capability': 'pick',
     'duration_s': 2},
    {'task_id': 'stack', 'type': 'place', 'station': 'tray', 'capability': 'place',
     'duration_s': 1, 'after': ['unload']},
    {'task_id': 'weld', 'type': 'pick', 'station': 'press', 'capability': 'weld',
     'duration_s': 5}]}


def test_a_signed_mission_reaches_the_robot_and_is_acknowledged(
        make_node: Any, ros_process: Any, tmp_path: Path, mosquitto_broker: Any) -> None:
    from cobot_hybrid_msgs.msg import Mission as MissionMsg
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Float64

    key = Ed25519PrivateKey.generate()
    pub = tmp_path / 'planner.pub'
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM,
                                                  PublicFormat.SubjectPublicKeyInfo))
    params = tmp_path / 'bridge.yaml'
    params.write_text(yaml.safe_dump({'bridge_node': {'ros__parameters': {
        'robot_id': 'cobot-a', 'broker_port': mosquitto_broker.port,
        'data_dir': str(tmp_path / 'robot'), 'cloud_public_keys': [f'planner={pub}']}}}))
    bridge = ros_process('cobot_hybrid_bridge.nodes.bridge_node', '--ros-args',
                         '--params-file', str(params))
    harness = make_node('robot_side')
    missions: list[Any] = []
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    harness.node.create_subscription(MissionMsg, 'mission', missions.append, latched)
    executor = ros_process('cobot_hybrid_bridge.nodes.mission_executor_node')
    skill = ros_process('cobot_hybrid_bridge.nodes.skill_server_node')   # runs each task
    scale = harness.node.create_publisher(Float64, 'speed_scale', latched)
    harness.node.create_timer(0.1, lambda: scale.publish(Float64(data=1.0)))  # path clear

    cfg = PlannerConfig(data_dir=tmp_path / 'cloud', broker_port=mosquitto_broker.port,
                        plan_time_limit_s=0.3, resend_after_s=2.0)
    planner = PlannerService(cfg, parse_site(SITE), key)
    planner.start()
    try:
        def online() -> bool:
            planner.step()
            return 'cobot-a' in planner._online
        assert harness.spin_until(online, 30.0), bridge.log()
        orders = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='mes',
                             protocol=mqtt.MQTTv5)
        orders.connect('127.0.0.1', mosquitto_broker.port)
        orders.loop_start()
        orders.publish('cobot/v1/orders', json.dumps(ORDER).encode(), qos=1).wait_for_publish(5)

        def acked() -> bool:
            planner.step()
            return bool(missions) and planner.missions().get('cobot-a', {}).get(
                'acked') == 'accepted'
        assert harness.spin_until(acked, 30.0), (planner.missions(), bridge.log())
        orders.loop_stop()
        orders.disconnect()
        assert [t.task_id for t in missions[-1].tasks] == ['unload', 'stack']
        assert "capability 'weld'" in planner.rejected_tasks['weld']

        # The executor runs both tasks; their progress comes back and closes them.
        def done() -> bool:
            planner.step()
            status = planner.task_status()
            return all(status[t]['status'] == 'done' for t in ('unload', 'stack'))
        assert harness.spin_until(done, 30.0), (planner.task_status(), executor.log(),
                                                skill.log())
        assert [s for _, s, _ in planner.fleet.progress_of('unload')] == ['started', 'done']
        sent = planner.sent
        version = planner.missions()['cobot-a']['version']
    finally:
        planner.stop()
    # A planner restart resumes from its ledger: nothing changed, nothing is sent again.
    again = PlannerService(cfg, parse_site(SITE), key)
    again.start()
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            again.step()
            time.sleep(0.05)
        assert again.missions()['cobot-a']['version'] == version == 1  # no empty mission first
        assert again.sent == 0 and sent >= 1
        assert again.task_status()['stack']['status'] == 'done'
    finally:
        again.stop()
