"""The shape of the package: pure cores, thin node shells, metadata that colcon can build."""

from __future__ import annotations

import ast
import importlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ['cobot_hybrid_perception', 'cobot_hybrid_bridge', 'cobot_hybrid_planner']
ROS_MODULE = re.compile(r'^(rclpy|rcl_interfaces|\w+_msgs|\w+_interfaces|launch|launch_ros)\b')


def _python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob('*.py'))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize('package', PACKAGES)
def test_no_module_outside_nodes_imports_ros(package: str) -> None:
    offenders = {}
    for path in _python_files(package):
        if 'nodes' in path.relative_to(ROOT / package).parts:
            continue
        ros = sorted(name for name in _imports(path) if ROS_MODULE.match(name))
        if ros:
            offenders[str(path.relative_to(ROOT))] = ros
    assert not offenders, f'cores must not import ROS modules: {offenders}'


def test_the_protocol_package_imports_nothing_of_ours_and_no_ros_or_mqtt() -> None:
    offenders = {}
    for path in _python_files('cobot_hybrid_protocol'):
        bad = sorted(name for name in _imports(path)
                     if ROS_MODULE.match(name) or name.startswith(('paho', 'cobot_hybrid_'))
                     and not name.startswith('cobot_hybrid_protocol'))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert _python_files('cobot_hybrid_protocol'), 'the protocol package is missing'
    assert not offenders, f'the protocol package must stand alone: {offenders}'
    errors = importlib.import_module('cobot_hybrid_protocol.errors')
    assert errors.ProtocolError.__bases__ == (Exception,)


def test_the_check_above_would_catch_an_rclpy_import(tmp_path: Path) -> None:
    sample = tmp_path / 'core.py'
    sample.write_text('import numpy\nfrom rclpy.node import Node\nimport vision_msgs.msg\n')
    assert {n for n in _imports(sample) if ROS_MODULE.match(n)} == {'rclpy.node',
                                                                    'vision_msgs.msg'}


@pytest.mark.parametrize('package', PACKAGES)
def test_each_package_has_a_core_a_nodes_shell_and_one_base_error(package: str) -> None:
    assert (ROOT / package / '__init__.py').is_file()
    assert (ROOT / package / 'nodes' / '__init__.py').is_file()
    errors = importlib.import_module(f'{package}.errors')
    bases = [obj for name, obj in vars(errors).items()
             if isinstance(obj, type) and issubclass(obj, Exception) and name.endswith('Error')
             and obj.__module__ == errors.__name__ and obj.__bases__ == (Exception,)]
    assert len(bases) == 1, f'{package}.errors must define exactly one base error: {bases}'


def test_package_xml_declares_what_colcon_and_rosdep_need() -> None:
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'cobot_hybrid'
    assert root.find('export/build_type').text == 'ament_python'
    exec_deps = {e.text for e in root.findall('exec_depend')}
    for dep in ['rclpy', 'std_msgs', 'sensor_msgs', 'geometry_msgs', 'visualization_msgs',
                'diagnostic_msgs', 'nav_msgs', 'vision_msgs', 'python3-numpy']:
        assert dep in exec_deps, dep
    assert 'python3-pytest' in {e.text for e in root.findall('test_depend')}
    assert (ROOT / 'resource' / 'cobot_hybrid').is_file()


def test_console_scripts_point_at_node_mains() -> None:
    setup_py = (ROOT / 'setup.py').read_text()
    scripts = re.findall(r"'([\w-]+) = ([\w.]+):(\w+)'", setup_py)
    assert scripts, 'no console scripts declared'
    for name, module, func in scripts:
        if name.endswith('_node'):
            assert module.endswith(f'nodes.{name}'), f'{name} must live in nodes/{name}.py'
        assert callable(getattr(importlib.import_module(module), func))


def test_setup_installs_launch_and_config_to_share() -> None:
    setup_py = (ROOT / 'setup.py').read_text()
    assert "f'share/{PACKAGE}/launch'" in setup_py and "glob('launch/*.launch.py')" in setup_py
    assert "f'share/{PACKAGE}/config'" in setup_py and "glob('config/*.yaml')" in setup_py
    assert (ROOT / 'config' / 'fastdds_loopback.xml').is_file()


def test_launch_files_start_declared_executables_with_existing_params() -> None:
    # `ros2 launch` cannot run here (no launch wheel); check what can be checked statically.
    setup_py = (ROOT / 'setup.py').read_text()
    scripts = set(re.findall(r"'([\w-]+) = [\w.]+:\w+'", setup_py))
    launch_files = sorted((ROOT / 'launch').glob('*.launch.py'))
    assert launch_files
    for path in launch_files:
        tree = ast.parse(path.read_text(), filename=str(path))
        assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description'
                   for n in tree.body), path.name
        executables = [kw.value for n in ast.walk(tree) if isinstance(n, ast.Call)
                       for kw in n.keywords if kw.arg == 'executable']
        assert executables, f'{path.name} starts no executable'
        for executable in executables:
            assert isinstance(executable, ast.Constant) and executable.value in scripts, \
                f'{path.name}: {ast.dump(executable)}'
        yaml_names = re.findall(r"'(\w+\.yaml)'", path.read_text())
        assert yaml_names, f'{path.name} names no params file'
        for name in yaml_names:
            assert (ROOT / 'config' / name).is_file(), name
