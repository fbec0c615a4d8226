"""edge.launch.py, checked statically (the ``launch`` package cannot be installed here).

`ros2 launch` needs a ROS distribution; what can be checked without it: the node list, that
every node gets its shipped params file then ``params_file``, the namespace, the remaps of
every topic argument, lifecycle nodes with ``autostart`` from the argument, and that the
default overrides file is valid for every node (a real node loads it with the shipped files).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / 'launch' / 'edge.launch.py'
NODES = {'image_source_node': ('Node', 'perception.yaml'),
         'detector_node': ('LifecycleNode', 'perception.yaml'),
         'safety_monitor_node': ('LifecycleNode', 'safety.yaml'),
         'bridge_node': ('Node', 'bridge.yaml'),
         'mission_executor_node': ('Node', 'bridge.yaml')}
TOPICS = ('image', 'camera_info', 'robot_speed', 'speed_scale', 'protective_stop')


def _tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, 'id', getattr(n.func, 'attr', None)) == name]


def _kw(call: ast.Call, name: str) -> Any:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_it_declares_the_arguments_a_robot_integrator_needs() -> None:
    declared = {ast.literal_eval(c.args[0]) for c in _calls(_tree(), 'DeclareLaunchArgument')
                if isinstance(c.args[0], ast.Constant)}
    assert {'robot_id', 'namespace', 'log_level', 'params_file', 'autostart',
            'image_source', 'executor', 'camera_tf'} <= declared
    source = LAUNCH.read_text()
    assert "TOPICS = ('image', 'camera_info', 'robot_speed', 'speed_scale', 'protective_stop')" \
        in source   # each declared as an argument by the comprehension over TOPICS


@pytest.mark.parametrize('node', sorted(NODES))
def test_each_node_gets_namespace_params_and_remaps(node: str) -> None:
    kind, shipped = NODES[node]
    calls = [c for c in _calls(_tree(), kind)
             if isinstance(_kw(c, 'name'), ast.Constant) and _kw(c, 'name').value == node]
    assert len(calls) == 1, f'{node} must be started once as a {kind}'
    call = calls[0]
    assert _kw(call, 'executable').value == node
    assert ast.unparse(_kw(call, 'namespace')) == 'namespace'
    assert ast.unparse(_kw(call, 'remappings')) == 'remaps'
    params = ast.unparse(_kw(call, 'parameters'))
    assert f"params('{shipped}')" in params, params
    if kind == 'LifecycleNode':
        assert "'autostart': arg('autostart')" in params
    if node == 'safety_monitor_node':
        assert "'publish_camera_tf': arg('camera_tf')" in params
    if node in ('image_source_node', 'mission_executor_node'):
        assert _kw(call, 'condition') is not None, f'{node} is optional'
    assert (ROOT / 'config' / shipped).is_file()


def test_the_default_overrides_file_loads_into_every_node_in_a_namespace(
        ros_context: Any) -> None:
    import importlib

    from cobot_hybrid_protocol.settings import specs

    overrides = ROOT / 'config' / 'edge_overrides.yaml'
    for node in ('detector_node', 'safety_monitor_node', 'mission_executor_node',
                 'image_source_node'):
        module = importlib.import_module(f'cobot_hybrid_perception.nodes.{node}'
                                         if node != 'mission_executor_node'
                                         else 'cobot_hybrid_bridge.nodes.mission_executor_node')
        cls = next(v for k, v in vars(module).items() if k.endswith('Node')
                   and isinstance(v, type) and v.__module__ == module.__name__)
        shipped = ROOT / 'config' / NODES[node][1]
        instance = cls(context=ros_context, namespace='cobot7', cli_args=[
            '--ros-args', '--params-file', str(shipped), '--params-file', str(overrides)])
        try:
            declared = set(instance._parameters)
            assert all(name in declared for config in module.CONFIGS for name in specs(config))
        finally:
            instance.destroy_node()
