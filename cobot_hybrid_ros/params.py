"""Declare ROS parameters from a validated frozen dataclass, and re-validate on every change.

A node lists :class:`ParamSpec` entries (name, description, range, read-only); the dataclass
named as ``config_type`` holds the defaults and validates in ``__post_init__``. The same
validator answers live ``ros2 param set`` calls, so a bad value is refused with its reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

ConfigT = TypeVar('ConfigT')
_ARRAY_TYPES = {'string': Parameter.Type.STRING_ARRAY, 'integer': Parameter.Type.INTEGER_ARRAY,
                'double': Parameter.Type.DOUBLE_ARRAY}


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter backed by a field of the node's config dataclass."""

    name: str
    description: str
    read_only: bool = False
    min_value: float | None = None
    max_value: float | None = None
    array_type: str | None = None   # 'string' | 'integer' | 'double': type of an empty default


class ParameterBinding(Generic[ConfigT]):
    """Keeps a node's parameters and its frozen config dataclass in step."""

    def __init__(self, node: Node, config_type: Callable[..., ConfigT],
                 specs: Sequence[ParamSpec],
                 on_change: Callable[[ConfigT], None] | None = None) -> None:
        self._node = node
        self._config_type = config_type
        self._specs = {spec.name: spec for spec in specs}
        self._on_change = on_change
        defaults = config_type()
        values: dict[str, Any] = {}
        for spec in specs:
            default = getattr(defaults, spec.name)
            descriptor = self._descriptor(spec, default)
            if isinstance(default, tuple) and not default:
                # ROS cannot infer an array's type from an empty default: declare it typed;
                # it stays unset (and the dataclass default applies) unless YAML sets it.
                typed = _ARRAY_TYPES[spec.array_type or 'string']
                param = node.declare_parameter(spec.name, typed, descriptor)
                values[spec.name] = default if param.value is None else param.value
                continue
            param = node.declare_parameter(spec.name, default, descriptor)
            values[spec.name] = param.value
        self.config: ConfigT = config_type(**values)
        node.add_on_set_parameters_callback(self._validate)

    @staticmethod
    def _descriptor(spec: ParamSpec, default: Any) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        if spec.min_value is not None and spec.max_value is not None:
            if isinstance(default, bool):
                pass
            elif isinstance(default, int):
                descriptor.integer_range = [IntegerRange(
                    from_value=int(spec.min_value), to_value=int(spec.max_value), step=0)]
            elif isinstance(default, float):
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=float(spec.min_value), to_value=float(spec.max_value), step=0.0)]
        return descriptor

    def _validate(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in self._specs}
        if not changes:
            return SetParametersResult(successful=True)
        try:
            candidate = dataclasses.replace(self.config, **changes)  # type: ignore[type-var]
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.config = candidate
        if self._on_change is not None:
            self._on_change(candidate)
        return SetParametersResult(successful=True)
