"""Bounded parsing: the one way any payload, envelope or file of this suite is read.

Every MQTT payload, ROS ``String`` JSON and configuration file can be wrong, huge, deep or
hostile. :func:`parse_json` and :func:`parse_yaml` refuse, before or while decoding, anything
beyond a :class:`Limits`:

* size in bytes (checked before anything is decoded);
* nesting depth (Python's decoder raises ``RecursionError`` about a thousand levels down,
  which ``except ValueError`` misses; both that and anything deeper than ``max_depth`` are
  refused, and the check walks the tree without recursing);
* integer digits (Python refuses ints beyond 4,300 digits with a ``ValueError`` deep inside
  the decoder; far fewer are already meaningless here);
* finite numbers only (``NaN``, ``Infinity``, ``1e400`` are refused);
* string length, members per object or list, values in the whole document;
* duplicate object keys (two parsers may otherwise read one signed text differently);
* text that is not UTF-8, or strings holding lone surrogates (SQLite and ``encode`` fail on
  them later).

A refusal raises :class:`~cobot_hybrid_protocol.errors.PayloadError` whose ``reason`` is one
of :data:`PAYLOAD_REASONS`, so callers count refusals by reason and keep running. Nothing else
escapes these functions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypeGuard

import yaml

from cobot_hybrid_protocol.errors import PayloadError

__all__ = ['COMMAND_LIMITS', 'FILE_LIMITS', 'ID_MAX', 'Limits', 'PAYLOAD_REASONS',
           'TELEMETRY_LIMITS', 'check_tree', 'is_name', 'is_number_in', 'parse_json',
           'parse_yaml', 'read_json_file', 'refusal']

ID_MAX = 128    # characters of an id (task, station, mission, order, frame)

PAYLOAD_REASONS = ('too_large', 'not_utf8', 'not_json', 'not_yaml', 'too_deep', 'big_integer',
                   'non_finite', 'long_string', 'too_many_items', 'too_many_values',
                   'duplicate_key', 'bad_string', 'bad_type', 'no_header')



@dataclass(frozen=True)
class Limits:
    """What one document may hold at most."""

    max_bytes: int = 64 * 1024
    max_depth: int = 16            # containers inside containers
    max_string: int = 4096         # characters of one string (object keys too)
    max_items: int = 1000          # members of one object or list
    max_values: int = 20_000       # values in the whole document
    max_int_digits: int = 19       # 2**63 has 19 digits
    unique_keys: bool = False      # refuse duplicate keys (signed commands: one reading only)

    def __post_init__(self) -> None:
        for name in ('max_bytes', 'max_depth', 'max_string', 'max_items', 'max_values',
                     'max_int_digits'):
            if getattr(self, name) < 1:
                raise ValueError(f'Limits.{name} must be >= 1')


#: Commands (the JSON inside a signed envelope): small, shallow.
COMMAND_LIMITS = Limits(max_bytes=256 * 1024, max_depth=8, max_string=1024, max_items=1000,
                        max_values=50_000, unique_keys=True)
#: Uplink envelopes and planner input: any ROS message as JSON, bounded.
TELEMETRY_LIMITS = Limits(max_bytes=1024 * 1024, max_depth=32, max_string=64 * 1024,
                          max_items=10_000, max_values=200_000)
#: Configuration files (routes, site, orders) and local state files.
FILE_LIMITS = Limits(max_bytes=8 * 1024 * 1024, max_depth=32, max_string=64 * 1024,
                     max_items=100_000, max_values=1_000_000, unique_keys=True)


def is_number_in(value: Any, low: float = -math.inf, high: float = math.inf
                 ) -> TypeGuard[int | float]:
    """Whether ``value`` is a real number (not a bool), finite, within [low, high]."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) \
        and math.isfinite(value) and low <= value <= high


def is_name(value: Any, max_chars: int = ID_MAX) -> TypeGuard[str]:
    """Whether ``value`` is a non-empty printable string of at most ``max_chars``."""
    return isinstance(value, str) and 0 < len(value) <= max_chars and value.isprintable()


def _reject(reason: str, detail: str) -> PayloadError:
    return PayloadError(reason, detail)


def _text(raw: bytes | str, limits: Limits, what: str) -> str:
    """Return the input as text if it is within ``max_bytes`` and UTF-8."""
    data = raw.encode('utf-8', 'surrogatepass') if isinstance(raw, str) else bytes(raw)
    if len(data) > limits.max_bytes:
        raise _reject('too_large', f'{what} is {len(data)} bytes, more than {limits.max_bytes}')
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as exc:
        raise _reject('not_utf8', f'{what} is not UTF-8 text ({exc.reason} at byte '
                      f'{exc.start})') from None


def parse_json(raw: bytes | str, limits: Limits = TELEMETRY_LIMITS, what: str = 'payload'
               ) -> Any:
    """Decode JSON within ``limits``; raise PayloadError (with a reason) otherwise."""
    text = _text(raw, limits, what)

    def parse_constant(name: str) -> Any:
        raise _reject('non_finite', f'{name} in {what}: only finite numbers are accepted')

    def make_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            names = [key for key, _ in pairs]
            duplicate = next(key for key in names if names.count(key) > 1)
            raise _reject('duplicate_key', f'key {duplicate[:40]!r} appears twice in {what}')
        return obj

    try:
        value = json.loads(text, parse_constant=parse_constant,
                           object_pairs_hook=make_object if limits.unique_keys else None)
    except PayloadError:
        raise
    except json.JSONDecodeError as exc:
        raise _reject('not_json', f'{what} is not JSON: {exc.msg} at line {exc.lineno} column '
                      f'{exc.colno}') from None
    except ValueError:   # Python refuses integers beyond 4,300 digits
        raise _reject('big_integer', f'{what} holds an integer of more than 4,300 digits (at '
                      f'most {limits.max_int_digits} are accepted)') from None
    except RecursionError:   # the C decoder stops a thousand levels down, cleanly
        raise _reject('too_deep', f'{what} is nested deeper than {limits.max_depth} levels'
                      ) from None
    check_tree(value, limits, what)
    return value


def read_json_file(path: Any, limits: Limits = FILE_LIMITS, what: str = 'the file') -> Any:
    """Read and parse a JSON file, reading at most ``max_bytes`` + 1 of it.

    Raises ``FileNotFoundError`` when it is absent (the caller decides what that means),
    ``OSError`` when it cannot be read, and :class:`PayloadError` for everything else (size
    included), like :func:`parse_json`.
    """
    with open(path, 'rb') as handle:
        raw = handle.read(limits.max_bytes + 1)
    return parse_json(raw, limits, what)


def refusal(exc: PayloadError, limits: Limits) -> str:
    """Say in a few words why a file was refused: 'is over 8 MiB', 'is not JSON', ..."""
    if exc.reason == 'too_large':
        size = limits.max_bytes
        return f'is over {size // 2**20} MiB' if size % 2**20 == 0 else f'is over {size} bytes'
    if exc.reason in ('not_json', 'not_utf8'):
        return f'is not JSON ({exc.detail})'
    return f'is refused ({exc.detail})'


def check_tree(value: Any, limits: Limits, what: str = 'document') -> None:
    """Check a decoded document (JSON types only) against ``limits``, without recursion.

    Also used on YAML documents, where aliases can make a small file a huge tree: the walk
    stops at ``max_values``.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    values = 0
    int_bound = 10 ** limits.max_int_digits
    max_string, max_depth, max_items = limits.max_string, limits.max_depth, limits.max_items
    while stack:
        item, depth = stack.pop()
        values += 1
        kind = type(item)
        if kind is str:
            if len(item) > max_string or not item.isascii():
                _check_string(item, limits, what)
        elif kind is float:
            if not math.isfinite(item):
                raise _reject('non_finite', f'{item} in {what} is not a finite number')
        elif kind is int:
            if not -int_bound < item < int_bound:
                raise _reject('big_integer', f'an integer of more than '
                              f'{limits.max_int_digits} digits in {what}')
        elif kind is dict or kind is list:
            if depth >= max_depth:
                raise _reject('too_deep', f'{what} is nested deeper than {max_depth} levels')
            if len(item) > max_items:
                raise _reject('too_many_items', f'a container of {len(item)} members in '
                              f'{what} (at most {max_items})')
            if kind is dict:
                for key in item:
                    if type(key) is not str:
                        raise _reject('bad_type', f'a key of type {type(key).__name__} in '
                                      f'{what}: keys must be strings')
                    if len(key) > max_string or not key.isascii():
                        _check_string(key, limits, what)
                stack.extend([(child, depth + 1) for child in item.values()])
            else:
                stack.extend([(child, depth + 1) for child in item])
        elif item is None or kind is bool:
            pass
        else:
            raise _reject('bad_type', f'a value of type {kind.__name__} in {what}: only '
                          'objects, lists, strings, numbers, booleans and null')
        if values > limits.max_values:
            raise _reject('too_many_values', f'{what} holds more than {limits.max_values} '
                          'values')


def _check_string(text: str, limits: Limits, what: str) -> None:
    if len(text) > limits.max_string:
        raise _reject('long_string', f'a string of {len(text)} characters in {what} (at most '
                      f'{limits.max_string})')
    try:
        text.encode('utf-8')
    except UnicodeEncodeError:
        raise _reject('bad_string', f'a string with a lone surrogate in {what}') from None


def parse_yaml(raw: bytes | str, limits: Limits = FILE_LIMITS, what: str = 'file') -> Any:
    """Decode YAML (safe loader) within ``limits``; raise PayloadError otherwise.

    Keys must be strings (quote numeric keys); dates and other YAML-only types are refused.
    """
    text = _text(raw, limits, what)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _reject('not_yaml', f'{what} is not valid YAML: {exc}') from None
    except RecursionError:
        raise _reject('too_deep', f'{what} is nested too deeply to read') from None
    except (ValueError, OverflowError) as exc:   # e.g. an integer beyond Python's limit
        raise _reject('big_integer', f'{what}: {exc}') from None
    check_tree(value, limits, what)
    return value
