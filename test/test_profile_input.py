"""A recorded profile (``cobot-hybrid profile --from``) and ``--broker`` read as hostile input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cobot_hybrid_cli import main
from cobot_hybrid_ros.cli import _broker_address
from cobot_hybrid_ros.errors import ProfileError
from cobot_hybrid_ros.profile_input import PROFILE_LIMITS, check_sample, read_sample


def good_sample() -> dict[str, Any]:
    """A sample of the shape graph_profile.sample() writes."""
    return {
        'seconds': 5.0,
        'topics': {'/image': {'type': 'sensor_msgs/msg/Image', 'publishers': ['/camera'],
                              'subscribers': ['/detector_node'], 'rate_hz': 4.0,
                              'bytes_per_s': 3.7e6, 'mean_message_bytes': 921_654.0}},
        'processes': {'detector_node': {'pid': 4242, 'cpu_cores': 1.5, 'rss_mb': 300.0},
                      'planner_node': {'pid': 4243, 'cpu_cores': None, 'rss_mb': None}},
        'nodes': {'/detector_node': {'name': 'detector_node', 'subscribes': ['/image']},
                  '/safety_monitor_node': {'name': 'safety_monitor_node', 'subscribes': []}},
        'diagnostics': {'detector_node: inference': {
            'level': 0, 'message': 'ok', 'values': {'total_ms_p50': '12.5', 'note': ''}}},
        'parameters': {'/safety_monitor_node': {'max_perception_age_s': 0.25}},
        'jetson': 'jtop (jetson_stats) not installed: no GPU/EMC figures',
    }


def write_profile(tmp_path: Path, sample: Any) -> Path:
    path = tmp_path / 'profile.json'
    path.write_text(json.dumps({'sample': sample, 'decision_matrix': []}))
    return path


def mutate(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """good_sample() with ``value`` at ``path`` (a missing marker deletes the key)."""
    sample = good_sample()
    parent: Any = sample
    for key in path[:-1]:
        parent = parent[key]
    if value is MISSING:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return sample


MISSING = object()
SECTIONS = ('topics', 'processes', 'nodes', 'diagnostics', 'parameters')
NUMBERS = [('topics', '/image', key) for key in ('rate_hz', 'bytes_per_s',
                                                  'mean_message_bytes')] + [
    ('seconds',), ('processes', 'detector_node', 'cpu_cores'),
    ('processes', 'detector_node', 'rss_mb'),
    ('parameters', '/safety_monitor_node', 'max_perception_age_s')]
BAD_NUMBERS = [-3, -1e-9, 'NaN', '4.0', None, True, [1], {'a': 1}]
NULLABLE = {('processes', 'detector_node', 'cpu_cores'),
            ('processes', 'detector_node', 'rss_mb')}

# (where, value, what the message says): every level of the shape, one wrong thing each.
CASES: list[tuple[tuple[str, ...], Any, str]] = [
    *[((s,), bad, f'{s}: ') for s in SECTIONS for bad in ([1], 'x', None, 5, MISSING)],
    *[(where, bad, '.'.join(where) + ': ') for where in NUMBERS for bad in BAD_NUMBERS
      if not (bad is None and where in NULLABLE)],
    *[(where, MISSING, '.'.join(where) + ': missing') for where in NUMBERS
      if where[0] != 'parameters'],   # a node's parameters are whichever it answered
    (('topics', '/image'), 'abc', 'topics./image: "abc" is not an object'),
    (('topics', '/image'), [1, 2], 'topics./image: a list of 2 items is not an object'),
    (('topics', '/image', 'type'), 7, 'topics./image.type: 7 is not a name'),
    (('topics', '/image', 'type'), '', 'topics./image.type: "" is not a name'),
    (('topics', '/image', 'publishers'), MISSING, 'topics./image.publishers: missing'),
    (('topics', '/image', 'publishers'), '/camera', 'topics./image.publishers: "/camera"'),
    (('topics', '/image', 'subscribers'), [[1]], 'topics./image.subscribers.0: a list'),
    (('topics', '/image', 'subscribers'), ['/a', 5], 'topics./image.subscribers.1: 5'),
    (('topics', '/image', 'publishers'), ['x' * 5000], 'topics./image.publishers.0: "xxx'),
    (('processes', 'detector_node'), 'x', 'processes.detector_node: "x" is not an object'),
    (('processes', 'detector_node', 'pid'), -1, 'processes.detector_node.pid: -1'),
    (('processes', 'detector_node', 'pid'), 1.5, 'processes.detector_node.pid: 1.5'),
    (('processes', 'detector_node', 'pid'), '12', 'processes.detector_node.pid: "12"'),
    (('processes', 'detector_node', 'pid'), MISSING, 'processes.detector_node.pid: missing'),
    (('nodes', '/detector_node'), [1, 2], 'nodes./detector_node: a list of 2 items'),
    (('nodes', '/detector_node', 'name'), ['a'], 'nodes./detector_node.name: a list of 1'),
    (('nodes', '/detector_node', 'name'), MISSING, 'nodes./detector_node.name: missing'),
    (('nodes', '/detector_node', 'name'), 'a\nb', 'nodes./detector_node.name: "a\\nb"'),
    (('nodes', '/detector_node', 'subscribes'), 5, 'nodes./detector_node.subscribes: 5'),
    (('nodes', '/detector_node', 'subscribes'), [[1]], 'subscribes.0: a list of 1 items'),
    (('diagnostics', 'detector_node: inference'), 'x', 'inference: "x" is not an object'),
    (('diagnostics', 'detector_node: inference'), {}, 'inference.level: missing'),
    (('diagnostics', 'detector_node: inference', 'values'), 'rtt_ms', 'values: "rtt_ms"'),
    (('diagnostics', 'detector_node: inference', 'values'), MISSING, 'values: missing'),
    (('diagnostics', 'detector_node: inference', 'values', 'total_ms_p50'), 12.5,
     'values.total_ms_p50: 12.5 is not a string'),
    (('diagnostics', 'detector_node: inference', 'level'), 'OK', 'level: "OK"'),
    (('diagnostics', 'detector_node: inference', 'level'), 256, 'level: 256'),
    (('diagnostics', 'detector_node: inference', 'message'), None, 'message: null'),
    (('topics', '/image', 'window_s'), -1, 'topics./image.window_s: -1 is not a number'),
    (('diagnostics', 'detector_node: inference', 'first_values'), [1], 'first_values: a list'),
    (('diagnostics', 'detector_node: inference', 'first_at'), 'x', 'first_at: "x" is not'),
    (('diagnostics', 'detector_node: inference', 'last_at'), -2.0, 'last_at: -2.0 is not'),
    (('parameters', '/safety_monitor_node'), 5, 'parameters./safety_monitor_node: 5'),
    (('parameters', '/safety_monitor_node'), [1], 'parameters./safety_monitor_node: a list'),
    (('jetson',), [1], 'jetson: a list of 1 items is not an object or a string'),
    (('jetson',), None, 'jetson: null'),
    (('jetson',), MISSING, 'jetson: missing'),
    (('jetson',), {'gpu': [1]}, 'jetson.gpu: a list of 1 items is not a number or a string'),
    (('topics', 'bad\x00name'), good_sample()['topics']['/image'], 'the key "bad\\u0000name"'),
    (('nodes', ''), {'name': 'x', 'subscribes': []}, 'nodes: the key "" is not a name'),
]


@pytest.mark.parametrize('where, value, says', CASES,
                         ids=[f'{".".join(w)}={"missing" if v is MISSING else repr(v)[:20]}'
                              for w, v, _ in CASES])
def test_a_wrong_value_anywhere_is_a_profile_error_naming_its_path(
        where: tuple[str, ...], value: Any, says: str) -> None:
    with pytest.raises(ProfileError) as caught:
        check_sample(mutate(where, value))
    message = str(caught.value)
    assert says in message and '\n' not in message and len(message) < 400, message


def test_the_profilers_shape_passes_and_unknown_keys_are_accepted() -> None:
    check_sample(good_sample())
    newer = good_sample()   # what a newer profiler may add
    newer['topics']['/image']['window_s'] = 5.0
    newer['diagnostics']['detector_node: inference'].update(
        first_values={'total_ms_p50': '11.0'}, first_at=1.0, last_at=4.9)
    newer['jetson'] = {'GPU': 12.5, 'Temp CPU': -256, 'nvp model': 'MAXN', 'fan': True}
    newer['host'] = 'robot-1'
    check_sample(newer)
    empty = {**good_sample(), **{s: {} for s in SECTIONS}}
    check_sample(empty)


def write_raw(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / 'profile.json'
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


GOOD = json.dumps({'sample': good_sample()})
RAW_CASES = {
    'deep_list': ('{"sample": ' + '[' * 100_000 + ']' * 100_000 + '}', 'nested deeper'),
    'deep_object': ('{"sample": {"nodes": ' + '{"a":' * 40 + '1' + '}' * 40 + '}}',
                    'nested deeper'),
    'int_4301_digits': (GOOD.replace('4242', '1' + '0' * 4300), 'more than 4,300 digits'),
    'int_30_digits': (GOOD.replace('4242', '1' + '0' * 30), 'more than 19 digits'),
    'float_overflow': (GOOD.replace('3700000.0', '1e999'), 'not a finite number'),
    'nan_literal': (GOOD.replace('3700000.0', 'NaN'), 'only finite numbers'),
    'infinity_literal': (GOOD.replace('4.0', '-Infinity'), 'only finite numbers'),
    'not_utf8': (b'\xff\xfe{}', 'not UTF-8'),
    'not_json': ('not json', 'is not a profile JSON'),
    'duplicate_key': (GOOD.replace('{"seconds": 5.0,', '{"seconds": 5.0, "seconds": 1,'),
                      'appears twice'),
    'long_string': (GOOD.replace('"ok"', '"' + 'x' * (PROFILE_LIMITS.max_string + 1) + '"'),
                    'a string of'),
    'top_list': ('[1]', 'has no "sample"'),
    'sample_number': ('{"sample": 3}', 'has no "sample"'),
    'no_nodes': ('{"sample": {"topics": {}}}', 'has no "sample" with "nodes"'),
}


@pytest.mark.parametrize('name', sorted(RAW_CASES))
def test_a_hostile_file_is_one_line_and_exit_2(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, says = RAW_CASES[name]
    path = write_raw(tmp_path, text)
    with pytest.raises(ProfileError) as caught:
        read_sample(path)
    assert says in str(caught.value), caught.value
    assert main(['profile', '--from', str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and says in err and len(err) < 600, err


# (a sample without an object "nodes" is refused before the shape: has no "sample" with ...)
@pytest.mark.parametrize('where, value, says', [c for c in CASES if c[0] != ('nodes',)][::7])
def test_the_command_refuses_a_wrong_shape_in_one_line(
        where: tuple[str, ...], value: Any, says: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_profile(tmp_path, mutate(where, value))
    assert main(['profile', '--from', str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is not a profile: ' in err and says in err, err


def test_a_good_recording_is_placed_again(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write_profile(tmp_path, good_sample())
    assert main(['profile', '--from', str(path), '--json']) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r['name']: r for r in result['decision_matrix']}
    assert rows['person detection']['input_bytes_per_s'] == pytest.approx(3.7e6)


def test_a_file_larger_than_a_profile_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / 'big.json'
    with path.open('wb') as out:
        out.truncate(PROFILE_LIMITS.max_bytes + 1)
    with pytest.raises(ProfileError, match='more than a profile'):
        read_sample(path)
    with pytest.raises(ProfileError, match='cannot read the recorded profile'):
        read_sample(tmp_path / 'absent.json')
    with pytest.raises(ProfileError, match='not a regular file'):
        read_sample(tmp_path)


@pytest.mark.parametrize('text, expected', [
    ('localhost:1883', ('localhost', 1883)), ('10.0.0.2:8883', ('10.0.0.2', 8883)),
    ('[::1]:1883', ('::1', 1883)), ('[fe80::1]:65535', ('fe80::1', 65535)),
    ('broker.example.org:1', ('broker.example.org', 1))])
def test_a_broker_address_is_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert _broker_address(text) == expected


@pytest.mark.parametrize('text', [
    'localhost', ':1883', 'h:0', 'h:65536', 'h:', 'h:-1', 'h:1e3', 'h:\u0661\u0662',
    'h:' + '9' * 5000, '::1:1883', '[]:1883', '[::1:1883', '[host]:1883', 'a b:1883',
    'a/b:1883', 'x' * 254 + ':1883', 'h\n:1883'])
def test_a_bad_broker_address_is_a_profile_error(
        text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ProfileError, match='--broker'):
        _broker_address(text)
    assert main(['profile', '--from', '/nonexistent', '--broker', text]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '--broker' in err, err
