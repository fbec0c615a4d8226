"""The shape of the package: pure cores, thin node shells, metadata that colcon can build."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ['cobot_hybrid_perception', 'cobot_hybrid_bridge', 'cobot_hybrid_planner']
ROS_MODULE = re.compile(r'^(rclpy|rcl_interfaces|\w+_msgs|\w+_interfaces|launch|launch_ros)\b')
#: Our Python packages; cobot_hybrid_msgs is a ROS interface package (ROS_MODULE), not one.
OURS = re.compile(r'^(cobot_hybrid_(?!msgs\b)\w+)')
#: The pure part of cobot_hybrid_ros (no ROS import): perception's cores use the codec, and the
#: safety replay the bags and the diagnostic level names, too.
ROS_HELPERS_PURE = frozenset({'cobot_hybrid_ros.image_codec', 'cobot_hybrid_ros.errors',
                              'cobot_hybrid_ros.bag', 'cobot_hybrid_ros.diagnostic_levels'})


def _python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob('*.py'))


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth.

    Function-level imports, relative ones (resolved), and by a literal string
    (``importlib.import_module('x')``, ``__import__('x')``).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    parts = _module_parts(path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ''
            if node.level:   # from . import x / from ..y import z, seen from this file
                base = parts[:-node.level]
                module = '.'.join([*base, module] if module else base)
            if module:
                names.add(module)
                names.update(f'{module}.{alias.name}' for alias in node.names)
        elif isinstance(node, ast.Call) and node.args \
                and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) \
                and ((isinstance(node.func, ast.Attribute) and node.func.attr == 'import_module')
                     or (isinstance(node.func, ast.Name)
                         and node.func.id in ('__import__', 'import_module'))):
            names.add(node.args[0].value)
    return names


def _python(code: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter from the repository root."""
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def _our_packages() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir()
                  if p.is_dir() and p.name.startswith('cobot_hybrid_')
                  and (p / '__init__.py').is_file())


def _module_parts(path: Path) -> list[str]:
    """Return the module path of a file from its package on (probes too).

    A probe in a temporary folder named like a package reads as that package's module.
    """
    parts = list(path.with_suffix('').parts)
    starts = [i for i, part in enumerate(parts) if part.startswith('cobot_hybrid_')]
    return parts[starts[-1]:] if starts else [path.stem]


def _in_nodes(path: Path) -> bool:
    return 'nodes' in _module_parts(path)


def _wrong_imports(package: str, path: Path) -> list[str]:
    """What a file of ``package`` imports against the layering (see docs/architecture.md)."""
    bad = []
    for name in sorted(_imports(path)):
        match = OURS.match(name)
        target = match.group(1) if match else None
        if ROS_MODULE.match(name) and not _in_nodes(path) \
                and not (package == 'cobot_hybrid_ros' and path.name not in (
                    'image_codec.py', 'errors.py')):
            bad.append(f'{name} (ROS outside nodes/)')
        if name.startswith('paho') and package == 'cobot_hybrid_protocol':
            bad.append(f'{name} (the contract is transport-free)')
        if target == package and not _in_nodes(path) and '.nodes' in name:
            bad.append(f'{name} (a core imports its own node shell, and with it rclpy)')
        if target is None or target == package:
            continue
        if package == 'cobot_hybrid_protocol':
            bad.append(f'{name} (the protocol imports nothing of ours)')
        elif package == 'cobot_hybrid_ros' and target != 'cobot_hybrid_protocol':
            bad.append(f'{name} (the node helpers import only the protocol)')
        elif package == 'cobot_hybrid_cli':
            bad.append(f'{name} (the dispatcher finds sub-commands by name, never by import)')
        elif package in PACKAGES and target in PACKAGES:
            bad.append(f'{name} (perception, bridge and planner never import each other)')
        elif package in PACKAGES and target == 'cobot_hybrid_ros' and not _in_nodes(path) \
                and not any(name == pure or name.startswith(pure + '.')
                            for pure in ROS_HELPERS_PURE):
            bad.append(f'{name} (only nodes/ use the ROS node helpers)')
        elif target == 'cobot_hybrid_cli':
            bad.append(f'{name} (nothing imports the dispatcher)')
    return bad


def test_every_import_follows_the_layers() -> None:
    packages = _our_packages()
    assert {'cobot_hybrid_protocol', 'cobot_hybrid_ros', 'cobot_hybrid_cli',
            *PACKAGES} <= set(packages), packages
    offenders = {}
    for package in packages:
        for path in _python_files(package):
            bad = _wrong_imports(package, path)
            if bad:
                offenders[str(path.relative_to(ROOT))] = bad
    assert not offenders, f'imports against the layering: {offenders}'


@pytest.mark.parametrize(('package', 'relative', 'source', 'why'), [
    ('cobot_hybrid_perception', 'cli.py', 'from cobot_hybrid_bridge.errors import X\n',
     'never import each other'),
    ('cobot_hybrid_planner', 'service.py', 'def f():\n    from cobot_hybrid_bridge import '
     'crdt\n', 'never import each other'),
    ('cobot_hybrid_protocol', 'topics.py', 'import cobot_hybrid_bridge.routes\n',
     'imports nothing of ours'),
    ('cobot_hybrid_protocol', 'topics.py', 'import paho.mqtt.client\n', 'transport-free'),
    ('cobot_hybrid_bridge', 'bridge.py', 'from cobot_hybrid_ros.params import P\n',
     'only nodes/'),
    ('cobot_hybrid_bridge', 'bridge.py', 'import rclpy\n', 'ROS outside nodes/'),
    ('cobot_hybrid_ros', 'params.py', 'from cobot_hybrid_perception import x\n',
     'import only the protocol'),
    ('cobot_hybrid_cli', '__init__.py', 'import cobot_hybrid_bridge.cli\n', 'by name'),
    ('cobot_hybrid_bridge', 'bridge.py', 'from .nodes import bridge_node\n',
     'its own node shell'),
    ('cobot_hybrid_bridge', 'bridge.py', 'from cobot_hybrid_bridge.nodes.bridge_node import B\n',
     'its own node shell'),
    ('cobot_hybrid_planner', 'service.py', 'from ..cobot_hybrid_bridge import crdt\n',
     'never import each other'),
    ('cobot_hybrid_planner', 'service.py', "import importlib\n"
     "importlib.import_module('cobot_hybrid_bridge.crdt')\n", 'never import each other'),
    ('cobot_hybrid_bridge', 'bridge.py', "__import__('rclpy')\n", 'ROS outside nodes/'),
])
def test_the_layer_check_catches_a_wrong_import(tmp_path: Path, package: str, relative: str,
                                                source: str, why: str) -> None:
    sample = tmp_path / package / relative   # never in the real tree: others scan it
    sample.parent.mkdir(parents=True, exist_ok=True)
    sample.write_text(source)
    bad = _wrong_imports(package, sample)
    assert any(why in item for item in bad), bad


@pytest.mark.parametrize('package', PACKAGES + ['cobot_hybrid_protocol'])
def test_importing_every_core_module_loads_no_ros(package: str) -> None:
    """What the static check means, checked by running it: no core pulls rclpy in."""
    modules = [str(p.relative_to(ROOT).with_suffix('')).replace('/', '.')
               for p in _python_files(package) if not _in_nodes(p)]
    code = ('import importlib, sys\n'
            f'for name in {modules!r}:\n'
            '    importlib.import_module(name.removesuffix(".__init__"))\n'
            'print(sorted(m for m in sys.modules if m.split(".")[0] in '
            '("rclpy", "rcl_interfaces") or m.endswith("_msgs")))\n')
    result = _python(code)
    assert result.stdout.strip() == '[]', f'{package} cores load ROS: {result.stdout}'


def test_nodes_may_use_the_helpers_and_the_codec_is_pure() -> None:
    node = ROOT / 'cobot_hybrid_bridge' / 'nodes' / 'bridge_node.py'
    assert not _wrong_imports('cobot_hybrid_bridge', node)
    for pure in ROS_HELPERS_PURE:
        path = ROOT / (pure.replace('.', '/') + '.py')
        assert not {n for n in _imports(path) if ROS_MODULE.match(n)}, pure


def test_the_protocol_package_stands_alone() -> None:
    assert _python_files('cobot_hybrid_protocol'), 'the protocol package is missing'
    errors = importlib.import_module('cobot_hybrid_protocol.errors')
    assert errors.ProtocolError.__bases__ == (Exception,)
    # A cloud client with only the protocol package: it imports without rclpy or paho.
    code = ('import sys, builtins\n'
            'real = builtins.__import__\n'
            'def guard(name, *a, **k):\n'
            '    if name.split(".")[0] in ("rclpy", "paho") or (name.startswith("cobot_hybrid_")'
            ' and not name.startswith("cobot_hybrid_protocol")):\n'
            '        raise ImportError("the protocol needs " + name)\n'
            '    return real(name, *a, **k)\n'
            'builtins.__import__ = guard\n'
            'import pkgutil, importlib, cobot_hybrid_protocol\n'
            'for m in pkgutil.iter_modules(cobot_hybrid_protocol.__path__):\n'
            '    importlib.import_module("cobot_hybrid_protocol." + m.name)\n'
            'print("ok")\n')
    result = _python(code, check=False)
    assert result.stdout.strip() == 'ok', result.stderr


_TOPIC_LITERAL = re.compile(r'^(\$share/[^/]*/)?cobot/v1(/|$)')


def _topic_literals(path: Path) -> list[str]:
    """String literals (and f-string heads) spelling a topic of the tree, docstrings aside."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    docstrings |= {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                   for part in node.values}   # f-string pieces: judged as the f-string
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings and _TOPIC_LITERAL.match(node.value):
            found.append(f'{path.name}:{node.lineno}: {node.value[:60]!r}')
        elif isinstance(node, ast.JoinedStr) and node.values \
                and isinstance(node.values[0], ast.Constant) \
                and _TOPIC_LITERAL.match(str(node.values[0].value)):
            found.append(f'{path.name}:{node.lineno}: f{str(node.values[0].value)[:60]!r}')
    return found


def test_no_topic_is_spelled_outside_the_protocol_package() -> None:
    sources = [p for package in _our_packages() if package != 'cobot_hybrid_protocol'
               for p in _python_files(package)]
    sources += sorted((ROOT / 'tools').glob('*.py')) + sorted((ROOT / 'benchmarks').glob('*.py'))
    offenders = [hit for path in sources for hit in _topic_literals(path)]
    assert not offenders, f'topics are built with cobot_hybrid_protocol.topics: {offenders}'


def test_the_topic_check_would_catch_a_spelled_topic(tmp_path: Path) -> None:
    sample = tmp_path / 'x.py'
    sample.write_text('"""cobot/v1/<robot>/status in a docstring is fine."""\n'
                      "a = f'cobot/v1/{robot}/cmd/mission'\nb = 'cobot/v1/orders'\n"
                      "c = f'$share/g/cobot/v1/orders'\nd = 'telemetry/x'\n")
    assert len(_topic_literals(sample)) == 3


@pytest.mark.parametrize('script', sorted(str(p.relative_to(ROOT)) for folder in
                                          ('benchmarks', 'tools')
                                          for p in (ROOT / folder).glob('*.py')))
def test_every_benchmark_and_tool_still_imports(script: str) -> None:
    """Nothing in the suite runs them: at least what they import from us must still exist."""
    code = ('import importlib.util, sys\n'
            f'spec = importlib.util.spec_from_file_location("probe", {str(ROOT / script)!r})\n'
            'module = importlib.util.module_from_spec(spec)\n'
            'sys.modules["probe"] = module\n'
            'spec.loader.exec_module(module)\n')
    _python(code)   # fails the test with the import error


def test_the_check_above_would_catch_an_rclpy_import(tmp_path: Path) -> None:
    sample = tmp_path / 'core.py'
    sample.write_text('import numpy\nfrom rclpy.node import Node\nimport vision_msgs.msg\n')
    assert {n for n in _imports(sample) if ROS_MODULE.match(n)} >= {'rclpy.node',
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
