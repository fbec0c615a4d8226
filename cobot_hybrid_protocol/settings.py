"""One source per parameter: a config dataclass field holds its default, range, unit and text.

A core declares its configuration as a frozen dataclass whose public fields are made with
:func:`setting`::

    @dataclass(frozen=True)
    class PlannerConfig:
        plan_time_limit_s: float = setting(2.0, 'planning time limit', unit='s',
                                           low=0.05, high=600.0, live=True)

        def __post_init__(self) -> None:
            check_settings(self, PlannerError)

and everything else is derived from it: the ROS node declares its parameters from
:func:`specs` (description, range, read-only unless ``live``), the YAML files are checked
against the defaults by a test, command lines take their defaults and help from :func:`specs`,
and the same :func:`check_settings` answers ``ros2 param set``. A field re-exposed by another
config (the bridge's node parameters that configure its MQTT link) is made with
:func:`same_as`, which copies the default and the spec instead of repeating them.
"""

from __future__ import annotations

import array
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ['Spec', 'check_settings', 'from_options', 'project', 'same_as', 'setting', 'sources',
           'specs']

_KEY = 'cobot_hybrid.setting'


@dataclass(frozen=True)
class Spec:
    """What a parameter means and which values it takes."""

    description: str
    unit: str = ''
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    live: bool = False             # False: read-only once the node runs (the default)
    array_type: str = ''           # 'string' | 'integer' | 'double' for tuple fields

    def text(self) -> str:
        """Return the description with its unit and range, as a node shows it."""
        extra = []
        if self.unit:
            extra.append(f'[{self.unit}]')
        if self.choices:
            extra.append(' | '.join(self.choices))
        if self.low is not None or self.high is not None:
            extra.append(f'range {_show(self.low, "-inf")} .. {_show(self.high, "inf")}')
        return ' '.join([self.description, *extra])


def _show(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f'{value:g}'


def setting(default: Any, description: str, *, unit: str = '', low: float | None = None,
            high: float | None = None, choices: tuple[str, ...] = (), live: bool = False,
            array_type: str = '') -> Any:
    """Make a dataclass field that is a parameter (use it as the field's default)."""
    if isinstance(default, list):
        raise TypeError('use a tuple default: dataclass defaults must be immutable')
    if isinstance(default, tuple) and array_type not in ('string', 'integer', 'double'):
        raise TypeError('a tuple setting names its array_type: string, integer or double')
    spec = Spec(description, unit, low, high, tuple(choices), live, array_type)
    return dataclasses.field(default=default, metadata={_KEY: spec})


def same_as(config_type: type, name: str, **changes: Any) -> Any:
    """Make a field with the default and spec of ``config_type.name`` (``changes`` alter it)."""
    source = _fields(config_type)[name]
    spec = source.metadata.get(_KEY)
    if spec is None:
        raise TypeError(f'{config_type.__name__}.{name} is not a setting')
    return dataclasses.field(default=source.default,
                             metadata={_KEY: dataclasses.replace(spec, **changes),
                                       'source': (config_type, name)})


def _fields(config_type: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(config_type)}


def specs(config_type: type) -> dict[str, tuple[Any, Spec]]:
    """Every setting of a config dataclass: name -> (default, spec), in field order."""
    return {f.name: (f.default, f.metadata[_KEY]) for f in dataclasses.fields(config_type)
            if _KEY in f.metadata}


def sources(config_type: type, of: type) -> Mapping[str, str]:
    """Return the fields made with ``same_as(of, ...)``: name here -> name in ``of``."""
    return {f.name: f.metadata['source'][1] for f in dataclasses.fields(config_type)
            if 'source' in f.metadata and f.metadata['source'][0] is of}


def project(config: Any, of: type, **extra: Any) -> Any:
    """Build an ``of`` config from the fields ``config`` re-exposes (plus ``extra``)."""
    values = {there: getattr(config, here) for here, there in sources(type(config), of).items()}
    return of(**values, **extra)


def check_settings(config: Any, error: type[Exception]) -> None:
    """Check every setting of a config instance; raise ``error`` naming the field and the fix.

    Integers given to a float setting become floats (a config built in code may say ``2``;
    ROS itself refuses an integer for a double parameter); arrays become tuples.
    """
    for name, (initial, spec) in specs(type(config)).items():
        value = getattr(config, name)
        where = f'{name} = {repr(value)[:80]}'
        if isinstance(initial, bool):
            if not isinstance(value, bool):
                raise error(f'{where}: must be true or false')
        elif isinstance(initial, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise error(f'{where}: must be an integer')
        elif isinstance(initial, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise error(f'{where}: must be a finite number')
            object.__setattr__(config, name, float(value))
        elif isinstance(initial, str):
            if not isinstance(value, str):
                raise error(f'{where}: must be text')
        elif isinstance(initial, tuple):
            if isinstance(value, array.array):   # what rclpy gives for double/integer arrays
                value = value.tolist()
            if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
                raise error(f'{where}: must be a list')
            object.__setattr__(config, name, tuple(value))
        value = getattr(config, name)
        if spec.choices and value not in spec.choices:
            raise error(f'{where}: use one of {", ".join(spec.choices)}')
        if spec.low is not None and isinstance(value, (int, float)) and value < spec.low:
            raise error(f'{where}: must be >= {spec.low:g}{_unit(spec)}')
        if spec.high is not None and isinstance(value, (int, float)) and value > spec.high:
            raise error(f'{where}: must be <= {spec.high:g}{_unit(spec)}')


def _unit(spec: Spec) -> str:
    return f' {spec.unit}' if spec.unit else ''


def from_options(config_type: type, options: Mapping[str, str], error: type[Exception]) -> Any:
    """Build a config from ``name=value`` text (a command line's ``--option`` pairs).

    Each value is read as its setting's type (``true``/``false``, integer, number, text, or a
    comma-separated list); an unknown name or a value of the wrong type raises ``error``
    naming it, and the config's own checks run as always.
    """
    known = specs(config_type)
    values: dict[str, Any] = {}
    for name, text in options.items():
        if name not in known:
            raise error(f'unknown option {str(name)[:80]!r}; known: {", ".join(known)}')
        initial, spec = known[name]
        try:
            if isinstance(initial, bool):
                if text.lower() not in ('true', 'false'):
                    raise ValueError(text)
                values[name] = text.lower() == 'true'
            elif isinstance(initial, int):
                values[name] = int(text)
            elif isinstance(initial, float):
                values[name] = float(text)
            elif isinstance(initial, tuple):
                items = [t.strip() for t in text.split(',') if t.strip()]
                kind = {'integer': int, 'double': float}.get(spec.array_type, str)
                values[name] = tuple(kind(t) for t in items)
            else:
                values[name] = text
        except ValueError:
            raise error(f'option {name}={str(text)[:80]!r}: {spec.text()}') from None
    return config_type(**values)
