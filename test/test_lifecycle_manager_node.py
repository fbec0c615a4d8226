"""lifecycle_manager_node over real DDS: all up in order, or none with the node's reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

pytestmark = pytest.mark.ros

MANAGER = 'cobot_hybrid_ros.nodes.lifecycle_manager_node'
SAFETY = 'cobot_hybrid_perception.nodes.safety_monitor_node'
DETECTOR = 'cobot_hybrid_perception.nodes.detector_node'
NS = '/cobot7'


def start(ros_process: Any, module: str, yaml_name: str, *params: str) -> Any:
    args = ['--ros-args', '-r', f'__ns:={NS}', '--params-file',
            str(ROOT / 'config' / yaml_name), '-p', 'autostart:=false']
    for param in params:
        args += ['-p', param]
    return ros_process(module, *args)


def manager(ros_process: Any, *nodes: str, timeout: str = '20.0') -> Any:
    names = '[' + ','.join(nodes) + ']'
    return ros_process(MANAGER, '--ros-args', '-r', f'__ns:={NS}', '-p',
                       f'node_names:={names}', '-p', f'service_timeout_s:={timeout}',
                       '-p', 'transition_timeout_s:=60.0', '-p', 'check_period_s:=0.2')


def states(harness: Any, *nodes: str) -> dict[str, int]:
    from lifecycle_msgs.srv import GetState

    found = {}
    for node in nodes:
        client = harness.node.create_client(GetState, f'{NS}/{node}/get_state')
        assert harness.spin_until(client.service_is_ready, 20.0), node
        future = client.call_async(GetState.Request())
        assert harness.spin_until(future.done, 10.0)
        found[node] = future.result().current_state.id
    return found


def test_the_nodes_come_up_in_order_and_a_dead_one_is_reported(
        make_node: Any, ros_process: Any) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.msg import State

    harness = make_node('bringup_probe')
    heard: list[str] = []
    harness.node.create_subscription(
        DiagnosticArray, f'{NS}/diagnostics',
        lambda m: heard.extend(s.message for s in m.status
                               if s.name == 'lifecycle_manager_node: nodes'), 10)
    start(ros_process, SAFETY, 'safety.yaml')
    detector = start(ros_process, DETECTOR, 'perception.yaml', 'imgsz:=320')
    boss = manager(ros_process, 'safety_monitor_node', 'detector_node')
    assert harness.spin_until(lambda: 'all 2 nodes active' in boss.log(), 90.0), boss.log()
    assert states(harness, 'safety_monitor_node', 'detector_node') == {
        'safety_monitor_node': State.PRIMARY_STATE_ACTIVE,
        'detector_node': State.PRIMARY_STATE_ACTIVE}
    log = boss.log()
    # the safety monitor up (configured, activated) before the detector starts
    order = [log.index(f'{NS}/{n}: {step}') for n in ('safety_monitor_node', 'detector_node')
             for step in ('configured', 'activated')]
    assert order == sorted(order), log
    assert harness.spin_until(lambda: 'all 2 nodes active' in heard, 10.0), heard

    detector.kill()
    assert harness.spin_until(lambda: any('detector_node (not answering)' in m for m in heard),
                              20.0), heard[-3:]


def test_a_refused_configure_leaves_nothing_running_and_says_why(
        make_node: Any, ros_process: Any, tmp_path: Path) -> None:
    from lifecycle_msgs.msg import State
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Float64

    harness = make_node('bringup_probe')
    scales: list[float] = []
    latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    harness.node.create_subscription(Float64, f'{NS}/speed_scale',
                                     lambda m: scales.append(m.data), latched)
    start(ros_process, SAFETY, 'safety.yaml')
    missing = tmp_path / 'no_such_model.onnx'
    start(ros_process, DETECTOR, 'perception.yaml', f'model:={missing}')
    boss = manager(ros_process, 'safety_monitor_node', 'detector_node')
    assert boss.wait(90.0) == 2, boss.log()
    log = boss.log()
    assert f'{NS}/detector_node: configure failed: cannot load the model' in log, log
    assert 'undone: 2 step' in log and 'not started' in log
    assert states(harness, 'safety_monitor_node', 'detector_node') == {
        'safety_monitor_node': State.PRIMARY_STATE_UNCONFIGURED,
        'detector_node': State.PRIMARY_STATE_UNCONFIGURED}
    # The safety monitor was up first (stopped: no perception yet) and said stop on the way
    # down; whatever of that reached this subscriber (discovery may come after it) is 0.
    assert set(scales) <= {0.0}


def test_a_node_that_is_not_there_stops_the_bring_up(make_node: Any, ros_process: Any) -> None:
    from lifecycle_msgs.msg import State

    harness = make_node('bringup_probe')
    start(ros_process, SAFETY, 'safety.yaml')
    boss = manager(ros_process, 'safety_monitor_node', 'camera_driver', timeout='3.0')
    assert boss.wait(60.0) == 2, boss.log()
    assert f'{NS}/camera_driver: its lifecycle services did not appear' in boss.log()
    assert states(harness, 'safety_monitor_node')['safety_monitor_node'] == \
        State.PRIMARY_STATE_UNCONFIGURED


def test_a_node_dying_mid_transition_is_not_waited_for(make_node: Any, ros_process: Any) -> None:
    start(ros_process, SAFETY, 'safety.yaml')
    ros_process('dying_lifecycle_node.py', '--ros-args', '-r', f'__ns:={NS}')
    # transition_timeout_s 300: were the manager to wait it out, boss.wait fails first.
    boss = ros_process(MANAGER, '--ros-args', '-r', f'__ns:={NS}', '-p',
                       'node_names:=[safety_monitor_node,camera_driver]', '-p',
                       'transition_timeout_s:=300.0')
    assert boss.wait(90.0) == 2, boss.log()
    log = boss.log()
    assert f'{NS}/camera_driver: configure failed: the node left the graph' in log, log
    assert 'undone: 2 step' in log
