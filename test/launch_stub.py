"""Run a launch file's ``generate_launch_description()`` without the ``launch`` package.

The ROS ``launch``/``launch_ros`` packages cannot be installed here (no wheels), so this stands
in for the part of them the suite's launch files use: arguments with defaults and choices,
``LaunchConfiguration``, ``PythonExpression``, ``ParameterValue``, ``IfCondition`` /
``UnlessCondition`` (and the deprecated ``LaunchConfigurationEquals`` / ``NotEquals``),
``Node`` and ``LifecycleNode``. :func:`evaluate`
resolves them for a set of ``name:=value`` arguments the way ``ros2 launch`` does (a
substitution in a parameter dict is read as YAML), and :meth:`Started.command` gives the
command line ``launch_ros`` would run, so a test can start the very processes.

What this cannot prove: that ``ros2 launch`` itself accepts the file (import paths, keyword
names are checked against the documented API by the names used here, not by running it).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


class LaunchError(Exception):
    """The launch file is wrong for these arguments (what ros2 launch would refuse)."""


@dataclass
class _Arg:
    name: str
    default_value: Any = None
    description: str = ''
    choices: Any = None


@dataclass
class _Config:
    name: str


@dataclass
class _Python:
    parts: list[Any]


@dataclass
class _Value:
    value: Any
    value_type: Any = None


@dataclass
class _Condition:
    kind: str
    args: tuple[Any, ...]


@dataclass
class _Action:
    kind: str
    kwargs: dict[str, Any]


class _Description:
    def __init__(self, entities: list[Any]) -> None:
        self.entities = list(entities)


def _modules() -> dict[str, types.ModuleType]:
    def module(name: str, **attrs: Any) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        return mod

    def condition(kind: str) -> Any:
        return lambda *args: _Condition(kind, args)

    def action(kind: str) -> Any:
        return lambda **kwargs: _Action(kind, kwargs)

    return {
        'launch': module('launch', LaunchDescription=_Description),
        'launch.actions': module('launch.actions', DeclareLaunchArgument=_Arg),
        'launch.conditions': module('launch.conditions', IfCondition=condition('if'),
                                    UnlessCondition=condition('unless'),
                                    LaunchConfigurationEquals=condition('equals'),
                                    LaunchConfigurationNotEquals=condition('not_equals')),
        'launch.substitutions': module('launch.substitutions', LaunchConfiguration=_Config,
                                       PythonExpression=_Python),
        'launch_ros': module('launch_ros'),
        'launch_ros.parameter_descriptions': module('launch_ros.parameter_descriptions',
                                                    ParameterValue=_Value),
        'launch_ros.actions': module('launch_ros.actions', Node=action('Node'),
                                     LifecycleNode=action('LifecycleNode')),
        'ament_index_python': module('ament_index_python'),
        'ament_index_python.packages': module(
            'ament_index_python.packages',
            get_package_share_directory=lambda package: str(ROOT)),
    }


@contextmanager
def _stubbed() -> Iterator[None]:
    saved = {name: sys.modules.get(name) for name in _modules()}
    sys.modules.update(_modules())
    try:
        yield
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


def describe(launch_file: Path) -> _Description:
    """Import the launch file against the stand-ins and call generate_launch_description()."""
    with _stubbed():
        spec = importlib.util.spec_from_file_location(launch_file.stem.replace('.', '_'),
                                                      launch_file)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        description = mod.generate_launch_description()
    assert isinstance(description, _Description)
    return description


@dataclass
class Started:
    """A node the launch would start, everything resolved."""

    kind: str
    package: str
    executable: str
    name: str
    namespace: str
    params_files: list[str]
    params: dict[str, Any]
    remaps: dict[str, str]
    arguments: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        """Return the ROS arguments launch_ros would pass the executable."""
        args = [*self.arguments]
        if '--ros-args' not in args:
            args.append('--ros-args')
        args += ['-r', f'__node:={self.name}']
        if self.namespace:
            args += ['-r', f'__ns:=/{self.namespace.strip("/")}']
        for path in self.params_files:
            args += ['--params-file', path]
        for key, value in self.params.items():
            args += ['-p', f'{key}:={_ros_value(value)}']
        for source, target in self.remaps.items():
            args += ['-r', f'{source}:={target}']
        return args


def _ros_value(value: Any) -> str:
    """Write a parameter value for ``-p name:=value`` (YAML; JSON is valid YAML)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


@dataclass
class Evaluated:
    """What a launch file declares and starts for one set of arguments."""

    arguments: dict[str, _Arg]
    nodes: list[Started]

    def node(self, name: str) -> Started:
        found = [n for n in self.nodes if n.name == name]
        assert len(found) == 1, f'{name} started {len(found)} times in {sorted(self.names())}'
        return found[0]

    def names(self) -> set[str]:
        return {n.name for n in self.nodes}


def evaluate(launch_file: Path, **given: str) -> Evaluated:
    """Resolve the launch file for ``name:=value`` arguments (others take their defaults)."""
    description = describe(launch_file)
    declared = {e.name: e for e in description.entities if isinstance(e, _Arg)}
    unknown = set(given) - set(declared)
    if unknown:
        raise LaunchError(f'arguments {sorted(unknown)} are not declared')
    values: dict[str, str] = {}
    for name, arg in declared.items():
        if name in given:
            values[name] = given[name]
        elif arg.default_value is not None:
            values[name] = _text(arg.default_value, values)
        else:
            raise LaunchError(f'argument {name} has no default and was not given')
        if arg.choices is not None and values[name] not in arg.choices:
            raise LaunchError(f'{name}:={values[name]} is not one of {list(arg.choices)}')
    nodes = [_start(e, values) for e in description.entities
             if isinstance(e, _Action) and _holds(e.kwargs.get('condition'), values)]
    return Evaluated(declared, nodes)


def _text(value: Any, values: Mapping[str, str]) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, _Config):
        if value.name not in values:
            raise LaunchError(f'LaunchConfiguration({value.name!r}) is not declared')
        return values[value.name]
    if isinstance(value, _Python):
        # What PythonExpression does: eval with the math module as the only global.
        return str(eval(_text(value.parts, values), {'math': math}))   # noqa: S307
    if isinstance(value, list):
        return ''.join(_text(part, values) for part in value)
    raise LaunchError(f'cannot resolve {value!r}')


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ('true', '1'):
        return True
    if lowered in ('false', '0'):
        return False
    raise LaunchError(f'{text!r} is not a boolean (launch accepts true/false/1/0)')


def _holds(condition: _Condition | None, values: Mapping[str, str]) -> bool:
    if condition is None:
        return True
    if condition.kind in ('if', 'unless'):
        result = _bool(_text(condition.args[0], values))
        return result if condition.kind == 'if' else not result
    name, expected = condition.args
    if name not in values:
        raise LaunchError(f'condition on undeclared argument {name!r}')
    return (values[name] == expected) == (condition.kind == 'equals')


def _parameter(value: Any, values: Mapping[str, str]) -> Any:
    """A parameter dict value as launch_ros gives it: YAML-read unless typed as a string."""
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, _Value):
        text = _text(value.value, values)
        if value.value_type is str:
            return text
        if value.value_type is not None:
            raise LaunchError(f'ParameterValue type {value.value_type} not modelled here')
        return yaml.safe_load(text)
    loaded = yaml.safe_load(_text(value, values))
    if loaded is None:
        raise LaunchError(f'{value!r} resolves to an empty value: give it a type with '
                          'ParameterValue(..., value_type=str)')
    return loaded


def _start(action: _Action, values: Mapping[str, str]) -> Started:
    kw = action.kwargs
    files, params = [], {}
    for entry in kw.get('parameters', []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                params[key] = _parameter(value, values)
        else:
            files.append(_text(entry, values))
    remaps = {_text(a, values): _text(b, values) for a, b in kw.get('remappings', [])}
    return Started(action.kind, _text(kw['package'], values), _text(kw['executable'], values),
                   _text(kw['name'], values), _text(kw.get('namespace', ''), values), files,
                   params, remaps, [_text(a, values) for a in kw.get('arguments', [])])
