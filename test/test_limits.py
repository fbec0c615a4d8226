"""Bounded parsing (cobot_hybrid_protocol.limits): every hostile class is a counted reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.limits import (
    COMMAND_LIMITS,
    PAYLOAD_REASONS,
    Limits,
    check_tree,
    parse_json,
    parse_yaml,
)
from cobot_hybrid_protocol.topics import RobotIdError, check_robot_id, robot_prefix

SMALL = Limits(max_bytes=20_000, max_depth=4, max_string=16, max_items=5, max_values=20,
               unique_keys=True)


@pytest.mark.parametrize(('raw', 'reason'), [
    (b'{"key_id": ' + b'7' * 5000 + b'}', 'big_integer'),      # Python's 4,300-digit limit
    (b'{"seq": 123456789012345678901}', 'big_integer'),        # beyond 2**63
    (b'[' * 5000 + b']' * 5000, 'too_deep'),                   # RecursionError in the decoder
    (b'[[[[[1]]]]]', 'too_deep'),
    (b'{"seq": Infinity}', 'non_finite'),
    (b'{"x": -Infinity}', 'non_finite'),
    (b'{"x": NaN}', 'non_finite'),
    (b'{"x": 1e400}', 'non_finite'),
    (b'{"a": 1, "a": 2}', 'duplicate_key'),
    (b'"\\ud800"', 'bad_string'),
    (b'\xff\xfe', 'not_utf8'),
    (b'{"a": ', 'not_json'),
    (b'', 'not_json'),
    (b'"' + b'x' * 17 + b'"', 'long_string'),
    (b'{"' + b'k' * 17 + b'": 1}', 'long_string'),
    (b'[1, 2, 3, 4, 5, 6]', 'too_many_items'),
    (b'[[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]',
     'too_many_values'),
    (b' ' * 20_001, 'too_large'),
])
def test_each_hostile_class_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_json(raw, SMALL)
    assert caught.value.reason == reason
    assert reason in PAYLOAD_REASONS


def test_duplicate_keys_are_allowed_only_where_limits_say_so() -> None:
    assert parse_json(b'{"a": 1, "a": 2}') == {'a': 2}      # telemetry: the last one wins
    with pytest.raises(PayloadError, match='duplicate_key'):
        parse_json(b'{"a": 1, "a": 2}', COMMAND_LIMITS)


def test_a_document_within_the_limits_is_returned_as_decoded() -> None:
    doc = {'a': [1, 2.5, 'x'], 'b': {'c': None, 'd': True}, 'e': -9_223_372_036_854_775_807}
    assert parse_json(json.dumps(doc).encode(), SMALL) == doc
    assert parse_json(json.dumps(doc), SMALL) == doc


def test_yaml_alias_bombs_dates_and_non_string_keys_are_refused() -> None:
    levels = zip('abcdef', 'bcdefg', strict=True)
    bomb = 'a: &a [x, x, x, x, x, x, x, x, x]\n' + ''.join(
        f'{n}: &{n} [{", ".join([f"*{p}"] * 9)}]\n' for p, n in levels)
    with pytest.raises(PayloadError, match='too_many_values'):
        parse_yaml(bomb)
    with pytest.raises(PayloadError, match='bad_type'):
        parse_yaml('when: 2026-12-01\n')
    with pytest.raises(PayloadError, match='bad_type'):
        parse_yaml('1: one\n')
    with pytest.raises(PayloadError, match='non_finite'):
        parse_yaml('x: .inf\n')
    with pytest.raises(PayloadError, match='not_yaml'):
        parse_yaml('a: [1, 2\n')
    assert parse_yaml('a: &x [1, 2]\nb: *x\n') == {'a': [1, 2], 'b': [1, 2]}


def test_check_tree_refuses_python_objects_that_json_cannot_carry() -> None:
    with pytest.raises(PayloadError, match='bad_type'):
        check_tree({'a': {1, 2}}, SMALL)
    with pytest.raises(PayloadError, match='non_finite'):
        check_tree([float('nan')], SMALL)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_either_parse_or_raise_payload_error(raw: bytes) -> None:
    try:
        parse_json(raw, SMALL)
    except PayloadError as exc:
        assert exc.reason in PAYLOAD_REASONS


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**62, 2**62)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(
        st.text(max_size=20), children, max_size=6), max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(_JSON)
def test_valid_json_round_trips_or_names_the_limit_it_broke(value: object) -> None:
    raw = json.dumps(value).encode()
    try:
        assert parse_json(raw, SMALL) == json.loads(raw)
    except PayloadError as exc:
        assert exc.reason in {'too_deep', 'long_string', 'too_many_items', 'too_many_values',
                              'bad_string'}


@pytest.mark.parametrize('robot_id', ['', 'a/b', 'a+', '#', '$SYS', 'a b', 'x' * 65, 'a\nb',
                                      'planners', 'orders', 7])
def test_robot_ids_that_break_topics_or_are_reserved_are_refused(robot_id: object) -> None:
    with pytest.raises(RobotIdError):
        check_robot_id(robot_id)


def test_a_valid_robot_id_makes_its_prefix() -> None:
    assert robot_prefix('cobot-7') == 'cobot/v1/cobot-7'


def test_a_json_file_is_read_within_its_limits(tmp_path: Path) -> None:
    from cobot_hybrid_protocol.errors import PayloadError
    from cobot_hybrid_protocol.limits import Limits, read_json_file, refusal

    limits = Limits(max_bytes=2**20)
    path = tmp_path / 'doc.json'
    with pytest.raises(FileNotFoundError):
        read_json_file(path, limits)
    path.write_text('{"a": [1, 2]}')
    assert read_json_file(path, limits) == {'a': [1, 2]}
    path.write_bytes(b' ' * (2**20 + 5))
    with pytest.raises(PayloadError) as too_big:
        read_json_file(path, limits)
    assert refusal(too_big.value, limits) == 'is over 1 MiB'
    path.write_text('[' * 5000)
    with pytest.raises(PayloadError) as deep:
        read_json_file(path, limits)
    assert refusal(deep.value, limits).startswith('is ')
