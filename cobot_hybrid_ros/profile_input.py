"""Read a recorded profile (``cobot-hybrid profile --from FILE``) as hostile input.

A ``profile.json`` is a file anyone can edit or forge, and the placement reads it as numbers:
a rate that is a string, a section that is a list, a negative byte rate (negative egress) or
NaN must not reach it. :func:`read_sample` parses the file within :data:`PROFILE_LIMITS`
(:func:`cobot_hybrid_protocol.limits.parse_json`: size, depth, digits, finite numbers, string
length) and :func:`check_sample` checks the whole shape
:func:`cobot_hybrid_ros.graph_profile.sample` writes: the right type at every level, numbers
finite and >= 0, names bounded. Keys it does not know are accepted (a newer profiler may write
more); every refusal is a :class:`~cobot_hybrid_ros.errors.ProfileError` that names the path,
e.g. ``topics./image.rate_hz: -3 is not a number >= 0``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.limits import Limits, is_number_in, read_json_file
from cobot_hybrid_ros.errors import ProfileError

__all__ = ['MAX_NAME', 'PROFILE_LIMITS', 'check_sample', 'read_sample']

#: A recorded profile: the sample is tens of kB; 16 MiB leaves room for a large graph.
PROFILE_LIMITS = Limits(max_bytes=16 * 2**20, max_depth=32, max_string=64 * 1024,
                        max_items=100_000, max_values=2_000_000, unique_keys=True)
#: Characters of a name (topic, node, process, parameter, diagnostics key).
MAX_NAME = 1024

_Path = tuple[str, ...]


def read_sample(path: Path) -> dict[str, Any]:
    """Return the checked ``sample`` of the profile file ``path``; ProfileError otherwise."""
    if path.exists() and not path.is_file():   # /dev/zero, a FIFO: no end, or no size
        raise ProfileError(f'{path} is not a regular file: give a profile.json')
    try:
        size = path.stat().st_size
        if size > PROFILE_LIMITS.max_bytes:
            raise ProfileError(f'{path} is {size} bytes, more than a profile '
                               f'({PROFILE_LIMITS.max_bytes})')
        data = read_json_file(path, PROFILE_LIMITS, 'the file')   # reads at most the limit
    except OSError as exc:
        raise ProfileError(f'cannot read the recorded profile {path}: '
                           f'{exc.strerror or exc}') from None
    except PayloadError as exc:
        raise ProfileError(f'{path} is not a profile JSON: {exc.detail}') from None
    sample = data.get('sample') if isinstance(data, dict) else None
    if not isinstance(sample, dict) or not isinstance(sample.get('nodes'), dict):
        raise ProfileError(f'{path} has no "sample" with "nodes": write one with '
                           '`cobot-hybrid profile --out DIR`')
    try:
        check_sample(sample)
    except ProfileError as exc:
        raise ProfileError(f'{path} is not a profile: {exc}') from None
    return sample


def check_sample(sample: Any) -> None:
    """Raise ProfileError (naming the path) unless ``sample`` has the profiler's shape."""
    top = _object(sample, ())
    _number(_member(top, 'seconds', (), 'a number >= 0'), ('seconds',))
    for name, topic in _section(top, 'topics').items():
        where = ('topics', name)
        info = _object(topic, where)
        _name(_member(info, 'type', where, 'a message type'), where + ('type',))
        for key in ('publishers', 'subscribers'):
            _names(_member(info, key, where, 'a list of node names'), where + (key,))
        for key in ('rate_hz', 'bytes_per_s', 'mean_message_bytes'):
            _number(_member(info, key, where, 'a number >= 0'), where + (key,))
        if 'window_s' in info:   # newer profilers: the topic's own measuring window
            _number(info['window_s'], where + ('window_s',))
    for name, process in _section(top, 'processes').items():
        where = ('processes', name)
        info = _object(process, where)
        pid = _member(info, 'pid', where, 'a process id')
        if type(pid) is not int or pid < 0:
            raise _bad(where + ('pid',), pid, 'a process id (an integer >= 0)')
        for key in ('cpu_cores', 'rss_mb'):
            _number(_member(info, key, where, 'a number >= 0 or null'), where + (key,),
                    nullable=True)
    for name, node in _section(top, 'nodes').items():
        where = ('nodes', name)
        info = _object(node, where)
        _name(_member(info, 'name', where, 'a node name'), where + ('name',))
        _names(_member(info, 'subscribes', where, 'a list of topic names'),
               where + ('subscribes',))
    for name, status in _section(top, 'diagnostics').items():
        where = ('diagnostics', name)
        info = _object(status, where)
        level = _member(info, 'level', where, 'a diagnostics level')
        if type(level) is not int or not 0 <= level <= 255:
            raise _bad(where + ('level',), level, 'a diagnostics level (an integer 0 to 255)')
        message = _member(info, 'message', where, 'a string')
        if not isinstance(message, str):
            raise _bad(where + ('message',), message, 'a string')
        _strings(_member(info, 'values', where, 'an object of strings'), where + ('values',))
        if 'first_values' in info:   # newer profilers: the first status heard, and when
            _strings(info['first_values'], where + ('first_values',))
        for key in ('first_at', 'last_at'):
            if key in info:
                _number(info[key], where + (key,))
    for name, params in _section(top, 'parameters').items():
        where = ('parameters', name)
        for key, value in _object(params, where).items():
            _key(key, where)
            _number(value, where + (key,))
    jetson = _member(top, 'jetson', (), 'an object or a string')
    if isinstance(jetson, dict):
        for key, value in jetson.items():
            _key(key, ('jetson',))
            if not isinstance(value, (str, bool)) and not is_number_in(value):
                raise _bad(('jetson', key), value, 'a number or a string')
    elif not isinstance(jetson, str):
        raise _bad(('jetson',), jetson, 'an object or a string')


def _section(top: dict[str, Any], key: str) -> dict[str, Any]:
    """``top[key]``, an object whose keys are names."""
    section = _object(_member(top, key, (), 'an object'), (key,))
    for name in section:
        _key(name, (key,))
    return section


def _member(obj: dict[str, Any], key: str, where: _Path, expected: str) -> Any:
    if key not in obj:
        raise ProfileError(f'{_where(where + (key,))}: missing ({expected})')
    return obj[key]


def _object(value: Any, where: _Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, value, 'an object')
    return value


def _number(value: Any, where: _Path, nullable: bool = False) -> None:
    if nullable and value is None:
        return
    if not is_number_in(value, 0.0):
        raise _bad(where, value, 'a number >= 0' + (' or null' if nullable else ''))


def _strings(value: Any, where: _Path) -> None:
    for key, item in _object(value, where).items():
        _key(key, where)
        if not isinstance(item, str):
            raise _bad(where + (key,), item, 'a string')


def _name(value: Any, where: _Path) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or not value.isprintable():
        raise _bad(where, value, f'a name (1 to {MAX_NAME} printable characters)')


def _names(value: Any, where: _Path) -> None:
    if not isinstance(value, list):
        raise _bad(where, value, 'a list of names')
    for index, item in enumerate(value):
        _name(item, where + (str(index),))


def _key(key: str, where: _Path) -> None:
    if not 0 < len(key) <= MAX_NAME or not key.isprintable():
        raise ProfileError(f'{_where(where)}: the key {_show(key)} is not a name '
                           f'(1 to {MAX_NAME} printable characters)')


def _bad(where: _Path, value: Any, expected: str) -> ProfileError:
    return ProfileError(f'{_where(where)}: {_show(value)} is not {expected}')


def _where(where: _Path) -> str:
    return '.'.join(part if part.isprintable() and len(part) <= 80 else _show(part)
                    for part in where) or 'sample'


_KINDS: dict[type, Callable[[Any], str]] = {
    dict: lambda v: f'an object of {len(v)} members',
    list: lambda v: f'a list of {len(v)} items',
}


def _show(value: Any) -> str:
    """Render ``value`` short and on one line, for a message."""
    kind = _KINDS.get(type(value))
    if kind is not None:
        return kind(value)
    text = json.dumps(value[:60] if isinstance(value, str) else value, ensure_ascii=True)
    if isinstance(value, str) and len(value) > 60:
        text = text[:-1] + f'..." ({len(value)} characters)'
    return text
