"""Bags (cobot_hybrid_ros.bag), `cobot-hybrid record` and `cobot-hybrid replay`.

The real run: the safety monitor and a synthetic detector over DDS, the recorder as its own
process; a person walks in (SLOW, then PROTECTIVE_STOP), the detector is killed (stale
perception), and the replay must make every recorded decision again.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from test_safety_monitor_node import SAFETY_YAML, listen, params_file, start_monitor

from cobot_hybrid_perception.safety_replay import ReplayError, load_params, monitor_topics
from cobot_hybrid_ros.bag import BagError, BagWriter, bag_topics, make_typestore, read_messages
from cobot_hybrid_ros.bag_recorder import parse_topic

STATUS = 'cobot_hybrid_msgs/msg/SafetyStatus'
DETECTIONS = 'vision_msgs/msg/Detection2DArray'


@pytest.fixture(scope='module')
def store() -> Any:
    return make_typestore()


def _status(store: Any, sec: int, state: str = 'RUN') -> Any:
    types = store.types
    time = types['builtin_interfaces/msg/Time']
    header = types['std_msgs/msg/Header'](stamp=time(sec=sec, nanosec=5), frame_id='base_link')
    return types[STATUS](header=header, state=state, cause='clear', reason='clear',
                         speed_scale=1.0, closest_distance_m=math.inf,
                         required_separation_m=0.0, allowed_speed_mps=1.0,
                         perception_age_s=0.01, perception_stamp=time(sec=sec, nanosec=0),
                         keypoints_used=False)


def _write(store: Any, path: Path, count: int = 3) -> None:
    with BagWriter(path, store) as writer:
        writer.add_topic('/safety_status', STATUS)
        for i in range(count):
            data = bytes(store.serialize_cdr(_status(store, 100 + i), STATUS))
            assert writer.write('/safety_status', 1_000 + i, data)


def test_a_bag_written_reads_back_with_our_types(store: Any, tmp_path: Path) -> None:
    _write(store, tmp_path / 'bag')
    assert bag_topics(tmp_path / 'bag') == {'/safety_status': (STATUS, 3)}
    got = list(read_messages(tmp_path / 'bag', store, {'/safety_status': [STATUS]}))
    assert [m.msg.header.stamp.sec for m in got] == [100, 101, 102]
    assert [m.log_time_ns for m in got] == [1_000, 1_001, 1_002]
    assert got[0].msg.closest_distance_m == math.inf and got[0].msg.state == 'RUN'
    # topics not asked for are not read
    assert list(read_messages(tmp_path / 'bag', store, {'/other': [STATUS]})) == []


def test_the_writer_refuses_what_it_cannot_record(store: Any, tmp_path: Path) -> None:
    with pytest.raises(BagError, match='exists already'):
        BagWriter(tmp_path, store)
    with BagWriter(tmp_path / 'bag', store, max_message_bytes=100) as writer:
        with pytest.raises(BagError, match='unknown here'):
            writer.add_topic('/x', 'nobody_msgs/msg/Nothing')
        with pytest.raises(BagError, match='not a message type'):
            writer.add_topic('/x', 'Nothing')
        writer.add_topic('/safety_status', STATUS)
        assert not writer.write('/safety_status', 1, b'\0' * 101)
        assert writer.refused == {'/safety_status': 1}
    assert bag_topics(tmp_path / 'bag') == {'/safety_status': (STATUS, 0)}


@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'no_bag', 'empty_dir'])
def test_a_damaged_bag_is_one_clear_error(store: Any, tmp_path: Path, damage: str) -> None:
    bag = tmp_path / 'bag'
    _write(store, bag, count=200)
    (mcap,) = bag.glob('*.mcap')
    if damage == 'truncate':
        mcap.write_bytes(mcap.read_bytes()[:mcap.stat().st_size // 2])
    elif damage == 'garbage':
        mcap.write_bytes(b'\x89MCAP0\r\n' + b'\xff' * 4000)
    elif damage == 'no_bag':
        bag = tmp_path / 'absent'
    else:
        bag = tmp_path / 'empty'
        bag.mkdir()
    with pytest.raises(BagError) as caught:
        list(read_messages(bag, store, {'/safety_status': [STATUS]}))
    assert str(bag) in str(caught.value)


def test_reading_refuses_a_huge_message_and_a_wrong_type(store: Any, tmp_path: Path) -> None:
    _write(store, tmp_path / 'bag')
    with pytest.raises(BagError, match='bytes'):
        list(read_messages(tmp_path / 'bag', store, {'/safety_status': [STATUS]},
                           max_message_bytes=10))
    with pytest.raises(BagError, match='expected vision_msgs'):
        list(read_messages(tmp_path / 'bag', store, {'/safety_status': [DETECTIONS]}))
    # Small messages, too many bytes in all (a replay holds them): refused, not swapped in.
    with pytest.raises(BagError, match='hold more than 300 bytes'):
        list(read_messages(tmp_path / 'bag', store, {'/safety_status': [STATUS]},
                           max_total_bytes=300))


@pytest.mark.parametrize(('text', 'topic', 'msgtype'), [
    ('detections', 'detections', ''),
    ('/ns/safety_status:' + STATUS, '/ns/safety_status', STATUS),
    ('/ns/safety_status:' + STATUS + ':latched', '/ns/safety_status', STATUS),
])
def test_topic_arguments(text: str, topic: str, msgtype: str) -> None:
    spec = parse_topic(text)
    assert (spec.name, spec.msgtype) == (topic, msgtype)
    assert spec.qos == ('latched' if text.endswith('latched') else 'sensor')


@pytest.mark.parametrize('text', ['', ':x', 'a b', 'a;rm', 'a:' + STATUS + ':fast', 'a::sensor'])
def test_bad_topic_arguments(text: str) -> None:
    with pytest.raises(BagError, match='--topics'):
        parse_topic(text)


def test_params_are_read_as_the_node_reads_them(tmp_path: Path) -> None:
    settings = load_params([SAFETY_YAML, Path(params_file(tmp_path, hold_time_s=0.7))])
    assert settings.safety.hold_time_s == 0.7 and settings.safety.max_perception_age_s == 0.5
    assert settings.robot_speed_type == 'twist'
    bad = tmp_path / 'bad.yaml'
    bad.write_text('safety_monitor_node: {ros__parameters: {hold_time_s: -1.0}}\n')
    with pytest.raises(ReplayError, match='hold_time_s'):
        load_params([bad])
    bad.write_text('other_node: {ros__parameters: {}}\n')
    with pytest.raises(ReplayError, match='no safety_monitor_node'):
        load_params([bad])
    with pytest.raises(ReplayError, match='--params'):
        load_params([])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_replay_of_a_broken_or_incomplete_bag_says_why(store: Any, tmp_path: Path) -> None:
    _write(store, tmp_path / 'bag')
    done = _cli('replay', str(tmp_path / 'bag'), '--params', str(SAFETY_YAML))
    assert done.returncode == 2 and 'no /detections in the bag' in done.stderr, done.stderr
    assert 'Traceback' not in done.stderr
    (mcap,) = (tmp_path / 'bag').glob('*.mcap')
    mcap.write_bytes(mcap.read_bytes()[:200])
    done = _cli('replay', str(tmp_path / 'bag'), '--params', str(SAFETY_YAML))
    assert done.returncode == 2 and 'not a readable ROS 2 bag' in done.stderr, done.stderr
    assert 'Traceback' not in done.stderr


@pytest.mark.ros
def test_a_recorded_run_replays_decision_for_decision(make_node: Any, ros_process: Any,
                                                     tmp_path: Path) -> None:
    bag = tmp_path / 'run'
    topics = [f'{t}:{spec}' for t, spec in monitor_topics().items()]
    recorder = ros_process('cobot_hybrid_cli', 'record', str(bag), '--topics', *topics,
                           name='recorder')
    harness = make_node('safety_listener')
    heard = listen(harness)
    assert harness.spin_until(lambda: 'subscribed /safety_status' in recorder.log(), 60.0), \
        recorder.log()
    # The detector first, then the monitor once the recorder hears the detector: every frame
    # the monitor gets, the recorder has (a best-effort reader joining a publisher later than
    # another one misses its first frames). The person waits while the monitor starts.
    detector = ros_process('synthetic_detector.py', '--start', '4.0', '--end', '0.6',
                           '--dwell', '7.0', '--walk', '3.0')
    assert harness.spin_until(lambda: 'first message on /detections' in recorder.log(), 60.0), \
        (recorder.log(), detector.log())
    monitor = start_monitor(ros_process, tmp_path)

    def slowed_then_stopped() -> bool:
        values = [v for _, v in heard.scales]
        return (1.0 in values and any(0.0 < v < 1.0 for v in values[values.index(1.0):])
                and values[-1] == 0.0)
    assert harness.spin_until(slowed_then_stopped, 40.0), (monitor.log(), detector.log())
    detector.kill()   # perception goes stale
    assert harness.spin_until(lambda: any('perception stale' in r
                                          for r in heard.reasons_since(0.0)), 10.0)
    harness.spin_for(1.0)   # the stale decisions reach the recorder too (it is a subscriber)
    assert recorder.stop(timeout_s=20.0) == 0, recorder.log()
    assert 'record: closed' in recorder.log(), recorder.log()

    done = _cli('replay', str(bag), '--params', str(SAFETY_YAML), '--params',
                str(tmp_path / 'safety_test.yaml'), '--json')
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-2000:], recorder.log())
    result = json.loads(done.stdout)
    assert result['ok'] and result['mismatched'] == 0, result
    assert result['compared'] == result['decisions'] - result['skipped_before_sync']
    assert result['skipped_before_sync'] == 0, result   # the recorder started first
    assert result['compared'] > 50, result
    assert {'SLOW', 'PROTECTIVE_STOP', 'RUN'} <= set(result['states']), result
    assert {'person', 'stale_perception', 'recovering'} <= set(result['causes']), result
    assert result['inputs']['detections'] > 30 and result['inputs']['robot_speed'] > 30

    text = _cli('replay', str(bag), '--params', str(SAFETY_YAML), '--params',
                str(tmp_path / 'safety_test.yaml'))
    assert text.returncode == 0 and 'every decision matched' in text.stdout, text.stdout
    # The same bag against another config: the replay notices.
    other = params_file(tmp_path / 'other', intrusion_distance_m=0.5) if (
        tmp_path / 'other').mkdir() is None else ''
    wrong = _cli('replay', str(bag), '--params', str(SAFETY_YAML), '--params', other)
    assert wrong.returncode == 1 and 'MISMATCH' in wrong.stdout, wrong.stdout[-2000:]
