"""edge.launch.py and cloud.launch.py, evaluated without the ``launch`` package.

`ros2 launch` needs a ROS distribution; ``launch_stub`` runs each file's
``generate_launch_description()`` against stand-ins for the ``launch`` API it uses and resolves
it for given arguments. Checked: which nodes start for which arguments, their namespace,
parameter files (shipped, then ``params_file``), parameters, remaps and lifecycle mode; that the
default overrides files load into real nodes in a namespace; and, in
``test_the_launched_edge_stack_comes_up``, the resolved command lines started as real
processes, brought up by the lifecycle manager, every frame they publish connected by TF.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from launch_stub import Evaluated, LaunchError, evaluate

ROOT = Path(__file__).resolve().parent.parent
EDGE = ROOT / 'launch' / 'edge.launch.py'
CLOUD = ROOT / 'launch' / 'cloud.launch.py'
TOPICS = ('image', 'camera_info', 'robot_speed', 'joint_states', 'speed_scale',
          'protective_stop')
SHIPPED = {'image_source_node': 'perception.yaml', 'detector_node': 'perception.yaml',
           'safety_monitor_node': 'safety.yaml', 'driver_adapter_node': 'driver_adapter.yaml',
           'bridge_node': 'bridge.yaml', 'mission_executor_node': 'bridge.yaml',
           'skill_server_node': 'bridge.yaml', 'planner_node': 'planner.yaml'}
LIFECYCLE_NODES = ('safety_monitor_node', 'detector_node', 'driver_adapter_node')


def console_scripts() -> dict[str, str]:
    return dict(re.findall(r"'([\w-]+) = ([\w.]+):main'", (ROOT / 'setup.py').read_text()))


def test_the_default_edge_stack_is_managed_and_complete() -> None:
    edge = evaluate(EDGE)
    assert edge.names() == {'safety_monitor_node', 'detector_node', 'bridge_node',
                            'lifecycle_manager_node'}
    overrides = str(ROOT / 'config' / 'edge_overrides.yaml')
    for node in edge.nodes:
        assert node.package == 'cobot_hybrid' and node.executable == node.name
        assert node.executable in console_scripts(), f'{node.name} has no console script'
        assert node.namespace == ''
        if node.name in SHIPPED:
            assert node.params_files == [str(ROOT / 'config' / SHIPPED[node.name]), overrides]
            assert node.remaps == {topic: topic for topic in TOPICS}
        for path in node.params_files:
            assert Path(path).is_file(), path
    for name in ('safety_monitor_node', 'detector_node'):
        assert edge.node(name).kind == 'LifecycleNode'
        assert edge.node(name).params['autostart'] is False   # the manager brings them up
    manager = edge.node('lifecycle_manager_node')
    assert manager.params == {'node_names': ['safety_monitor_node', 'detector_node']}
    assert manager.params_files == [str(ROOT / 'config' / 'lifecycle_manager.yaml'), overrides]
    assert edge.node('bridge_node').params == {'robot_id': 'cobot-1'}


@pytest.mark.parametrize(('mode', 'autostart', 'manager'), [
    ('manager', False, True), ('self', True, False), ('external', False, False)])
def test_the_lifecycle_mode_decides_who_brings_the_nodes_up(mode: str, autostart: bool,
                                                            manager: bool) -> None:
    edge = evaluate(EDGE, lifecycle=mode, driver='stop_trigger')
    for name in LIFECYCLE_NODES:
        assert edge.node(name).params['autostart'] is autostart
    assert ('lifecycle_manager_node' in edge.names()) is manager


def test_a_driver_adapter_joins_the_stack_and_the_bring_up() -> None:
    edge = evaluate(EDGE, driver='ur_speed_slider')
    adapter = edge.node('driver_adapter_node')
    assert adapter.params['output'] == 'ur_speed_slider'
    assert adapter.kind == 'LifecycleNode'
    # The adapter right after the safety monitor: the driver hears a stop before the detector
    # starts loading.
    assert edge.node('lifecycle_manager_node').params['node_names'] == [
        'safety_monitor_node', 'driver_adapter_node', 'detector_node']
    assert 'driver_adapter_node' not in evaluate(EDGE).names()


def test_robot_namespace_topics_and_options_reach_every_node() -> None:
    edge = evaluate(EDGE, namespace='cobot7', robot_id='r7', image='/camera/color/image_raw',
                    joint_states='/joint_states', speed_scale='/jtc/speed_scaling_input',
                    params_file='/etc/cobot/mine.yaml', camera_tf='true',
                    image_source='true', executor='true', log_level='debug')
    assert edge.names() >= {'image_source_node', 'mission_executor_node'}
    for node in edge.nodes:
        assert node.namespace == 'cobot7'
        assert node.arguments == ['--ros-args', '--log-level', 'debug']
        if node.name in SHIPPED:
            assert node.params_files[-1] == '/etc/cobot/mine.yaml'
            assert node.remaps['image'] == '/camera/color/image_raw'
            assert node.remaps['joint_states'] == '/joint_states'
            assert node.remaps['speed_scale'] == '/jtc/speed_scaling_input'
    assert edge.node('bridge_node').params['robot_id'] == 'r7'
    assert edge.node('safety_monitor_node').params['publish_camera_tf'] is True


@pytest.mark.parametrize('given', [{'lifecycle': 'nav2'}, {'driver': 'canbus'},
                                   {'camera_tf': 'yes'}, {'robotid': 'r7'}])
def test_a_wrong_argument_is_refused(given: dict[str, str]) -> None:
    with pytest.raises(LaunchError):
        evaluate(EDGE, **given)


def test_the_cloud_launch_starts_the_planner_with_overrides_and_replica_ids() -> None:
    cloud = evaluate(CLOUD, namespace='fleet', client_id='planner-b', fleet_id='site-1',
                     params_file='/etc/cobot_hybrid/planner.yaml')
    planner = cloud.node('planner_node')
    assert cloud.names() == {'planner_node'}
    assert planner.namespace == 'fleet'
    assert planner.params_files == [str(ROOT / 'config' / 'planner.yaml'),
                                    '/etc/cobot_hybrid/planner.yaml']
    assert planner.params == {'client_id': 'planner-b', 'fleet_id': 'site-1'}
    default = evaluate(CLOUD).node('planner_node')
    assert default.params_files[-1] == str(ROOT / 'config' / 'cloud_overrides.yaml')
    assert default.params == {'client_id': 'planner', 'fleet_id': ''}


def test_the_default_edge_overrides_load_into_every_node_in_a_namespace(
        ros_context: Any) -> None:
    import importlib

    from cobot_hybrid_protocol.settings import specs

    overrides = ROOT / 'config' / 'edge_overrides.yaml'
    for node in ('detector_node', 'safety_monitor_node', 'mission_executor_node',
                 'image_source_node', 'driver_adapter_node'):
        module = importlib.import_module(console_scripts()[node])
        cls = next(v for k, v in vars(module).items() if k.endswith('Node')
                   and isinstance(v, type) and v.__module__ == module.__name__)
        shipped = ROOT / 'config' / SHIPPED[node]
        instance = cls(context=ros_context, namespace='cobot7', cli_args=[
            '--ros-args', '--params-file', str(shipped), '--params-file', str(overrides)])
        try:
            declared = set(instance._parameters)
            assert all(name in declared for config in module.CONFIGS for name in specs(config))
        finally:
            instance.destroy_node()


def test_the_default_cloud_overrides_name_only_planner_settings() -> None:
    # A planner cannot start without its site and key files; what the file may hold is checked
    # against the planner's settings instead (a real planner loads it in test_node_parameters'
    # way only with those files).
    from cobot_hybrid_planner.nodes.planner_node import CONFIGS
    from cobot_hybrid_protocol.settings import specs

    known = {name for config in CONFIGS for name in specs(config)} | {'use_sim_time'}
    data = yaml.safe_load((ROOT / 'config' / 'cloud_overrides.yaml').read_text())
    for section, body in data.items():
        assert section in ('/**', '/**/planner_node'), section
        assert set(body['ros__parameters']) <= known


@pytest.mark.ros
@pytest.mark.xdist_group('whole_machine')   # six processes brought up in 120 s: not beside
def test_the_launched_edge_stack_comes_up(make_node: Any, ros_process: Any,   # heavy tests
                                          tmp_path: Path) -> None:
    """Start what edge.launch.py resolves to, as separate processes, and watch it come up."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Float64

    overrides = tmp_path / 'robot7.yaml'
    overrides.write_text(yaml.safe_dump({
        '/**/bridge_node': {'ros__parameters': {'data_dir': str(tmp_path / 'bridge')}},
        '/**/detector_node': {'ros__parameters': {'imgsz': 320}},
        '/**/image_source_node': {'ros__parameters': {'rate_hz': 5.0}}}))
    from cobot_hybrid_ros.frames import FrameWatcher

    edge: Evaluated = evaluate(EDGE, namespace='cobot7', robot_id='r7', image_source='true',
                               driver='speed_scaling_factor', params_file=str(overrides),
                               camera_tf='true')
    harness = make_node('launch_probe')
    watcher = FrameWatcher(harness.node)
    scales: list[float] = []
    latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    harness.node.create_subscription(Float64, '/cobot7/speed_scale',
                                     lambda m: scales.append(m.data), latched)
    started = {node.name: ros_process(console_scripts()[node.executable], *node.command(),
                                      name=node.name) for node in edge.nodes}
    manager = started['lifecycle_manager_node']
    assert harness.spin_until(lambda: 'all 3 nodes active' in manager.log(), 120.0), \
        '\n'.join(f'--- {n}\n{p.log()[-1500:]}' for n, p in started.items())
    assert harness.spin_until(lambda: bool(scales), 20.0)   # the safety monitor decides

    def frames_heard() -> bool:   # the frames, and the camera's transform (latched)
        watcher.discover()
        return ({'camera_optical_frame', 'base_link'} <= set(watcher.frames)
                and not watcher.unconnected('base_link'))
    harness.spin_until(frames_heard, 30.0)
    assert {'camera_optical_frame', 'base_link'} <= set(watcher.frames), watcher.frames
    # What rviz needs (its fixed frame is base_link): every frame published is connected.
    assert watcher.unconnected('base_link') == {}, (watcher.frames, watcher.tree.edges)
    assert watcher.tree.conflicts() == []
    for name, process in started.items():
        assert process.popen.poll() is None, f'{name} exited:\n{process.log()[-2000:]}'


@pytest.mark.parametrize('launch', sorted(p.name for p in (ROOT / 'launch').glob('*.launch.py')))
def test_every_launch_file_resolves_to_installed_executables_and_files(launch: str) -> None:
    evaluated = evaluate(ROOT / 'launch' / launch)
    assert evaluated.nodes, f'{launch} starts nothing with its defaults'
    for node in evaluated.nodes:
        assert node.executable in console_scripts(), f'{launch}: {node.executable}'
        for path in node.params_files:
            assert Path(path).is_file(), f'{launch}: {path}'
