"""ROS parameters declared from a config dataclass's settings, re-validated on every change.

The config dataclass is the one source (:mod:`cobot_hybrid_protocol.settings`): each of its
settings becomes a parameter with the setting's description (unit and range included), its
range as a ``ParameterDescriptor`` range and ``read_only`` unless the setting is ``live``.
``ros2 param set`` builds a new config with the same validator, so a bad value is refused
with its reason and nothing changes; a good one goes to ``on_change`` (which applies it to the
core, or refuses it by raising) and then into :attr:`ParameterBinding.config`, where a shell
that reads a live setting at each use finds it. Either way a live parameter changes what the
node does; ``test_node_parameters`` checks every node.
"""

from __future__ import annotations

import array
import dataclasses
import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from cobot_hybrid_protocol.settings import Spec, specs
from cobot_hybrid_ros.errors import UnknownParameterError

__all__ = ['ParameterBinding', 'descriptor', 'refuse_unknown_parameters']

ConfigT = TypeVar('ConfigT')
_ARRAY_TYPES = {'string': Parameter.Type.STRING_ARRAY, 'integer': Parameter.Type.INTEGER_ARRAY,
                'double': Parameter.Type.DOUBLE_ARRAY}


def descriptor(spec: Spec, default: Any) -> ParameterDescriptor:
    """Return the ROS descriptor of one setting: text, read-only unless live, range."""
    desc = ParameterDescriptor(description=spec.text(), read_only=not spec.live)
    if spec.low is not None or spec.high is not None:
        if isinstance(default, bool):
            pass
        elif isinstance(default, int):
            desc.integer_range = [IntegerRange(
                from_value=int(spec.low if spec.low is not None else -2**63),
                to_value=int(spec.high if spec.high is not None else 2**63 - 1), step=0)]
        elif isinstance(default, float):
            desc.floating_point_range = [FloatingPointRange(
                from_value=float(spec.low if spec.low is not None else -1e308),
                to_value=float(spec.high if spec.high is not None else 1e308), step=0.0)]
    return desc


def _plain(value: Any) -> Any:
    """ROS hands arrays over as ``array.array`` (double, integer) or lists: make them lists."""
    return value.tolist() if isinstance(value, array.array) else value


class ParameterBinding(Generic[ConfigT]):
    """Keeps a node's parameters and its frozen config dataclass in step.

    A node may hold several bindings (its core's config and its shell's); one callback per
    node checks a change against all of them before any is applied, so a ``ros2 param set``
    of several parameters at once is applied whole or not at all.
    """

    def __init__(self, node: Node, config_type: Callable[..., ConfigT],
                 on_change: Callable[[ConfigT], None] | None = None) -> None:
        self._specs = specs(config_type)   # type: ignore[arg-type]
        if not self._specs:
            raise TypeError(f'{config_type!r} has no settings to declare')
        self._on_change = on_change
        values: dict[str, Any] = {}
        for name, (default, spec) in self._specs.items():
            desc = descriptor(spec, default)
            if isinstance(default, tuple) and not default:
                # ROS cannot infer an array's type from an empty default: declare it typed;
                # it stays unset (and the dataclass default applies) unless YAML sets it.
                param = node.declare_parameter(name, _ARRAY_TYPES[spec.array_type], desc)
                values[name] = default if param.value is None else _plain(param.value)
                continue
            param = node.declare_parameter(name, default, desc)
            values[name] = _plain(param.value)
        self.config: ConfigT = config_type(**values)
        bindings: list[ParameterBinding[Any]] | None = getattr(node, _REGISTRY, None)
        if bindings is None:
            bindings = []
            setattr(node, _REGISTRY, bindings)
            node.add_on_set_parameters_callback(lambda params: _validate_all(bindings, params))
        bindings.append(self)

    @property
    def names(self) -> tuple[str, ...]:
        """The parameters this binding declared."""
        return tuple(self._specs)

    def _candidate(self, params: list[Parameter]) -> ConfigT | None:
        """Return the config with the changes of ``params`` (None: none is ours); raises."""
        changes = {p.name: _plain(p.value) for p in params if p.name in self._specs}
        if not changes:
            return None
        return dataclasses.replace(self.config, **changes)  # type: ignore[type-var]


_REGISTRY = '_cobot_hybrid_parameter_bindings'


def _validate_all(bindings: list[ParameterBinding[Any]],
                  params: list[Parameter]) -> SetParametersResult:
    """Check a change against every binding of the node, then apply it to all, or to none."""
    candidates = []
    for binding in bindings:
        try:
            candidate = binding._candidate(params)
        except Exception as exc:  # noqa: BLE001 - the parameter boundary: refuse, never raise
            return SetParametersResult(successful=False, reason=f'{type(exc).__name__}: {exc}')
        if candidate is not None:
            candidates.append((binding, candidate))
    for binding, candidate in candidates:
        if binding._on_change is not None:
            try:
                binding._on_change(candidate)
            except Exception as exc:  # noqa: BLE001 - the new value could not be applied
                return SetParametersResult(successful=False,
                                           reason=f'not applied: {type(exc).__name__}: {exc}')
    for binding, candidate in candidates:
        binding.config = candidate
    return SetParametersResult(successful=True)


#: Parameters rclpy itself declares or reads from overrides.
_ROS_OWN = frozenset({'use_sim_time', 'start_type_description_service'})


def refuse_unknown_parameters(node: Node) -> None:
    """Raise UnknownParameterError if the node was given a parameter it never declared.

    Call it once every binding of the node is made. ROS silently ignores a value for an
    undeclared name: a misspelt ``max_perception_age`` would leave a safety monitor on its
    default. The error names the key and the nearest parameter the node has.
    """
    declared = set(node._parameters)
    given = set(node._parameter_overrides) - _ROS_OWN
    unknown = sorted(name for name in given - declared if not name.startswith('qos_overrides.'))
    if not unknown:
        return
    hints = []
    for name in unknown:
        names = sorted(declared - _ROS_OWN)
        close = [d for d in names if name.startswith(d) or d.startswith(name)] \
            or difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hints.append(f'{name!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
    raise UnknownParameterError(
        f'{node.get_fully_qualified_name()} has no parameter {", ".join(hints)}: fix the key in '
        'the params file (or the -p override); it would be ignored and the default used')
