"""driver_adapter_node over real DDS: a fake driver process records what each output tells it.

The safety monitor (a real ``safety_monitor_node`` process fed by the synthetic detector, or
this test process publishing ``speed_scale``/``protective_stop`` with the monitor's QoS) decides;
adapters (one process per output) tell ``test/procs/fake_driver.py``, which appends every
message and service request it gets to a JSON-lines file that the test reads.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

pytestmark = pytest.mark.ros

NODE = 'cobot_hybrid_perception.nodes.driver_adapter_node'
MONITOR = 'cobot_hybrid_perception.nodes.safety_monitor_node'
ADAPTER_YAML = ROOT / 'config' / 'driver_adapter.yaml'
SAFETY_YAML = ROOT / 'config' / 'safety.yaml'
CAMERA_TO_BASE = [-2.0, 0.0, 2.0, -0.627211, 0.627211, -0.326506, 0.326506]
SLIDER_STOP = 0.01   # the lowest fraction the UR driver takes: what the slider gets to stop


@dataclass
class Record:
    """What the fake driver received, read back from its JSON-lines file."""

    path: Path

    def entries(self, kind: str, since: float = 0.0) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.endswith('}')]
        return [row for row in rows if row['kind'] == kind and row['t'] >= since]

    def values(self, kind: str, since: float = 0.0) -> list[Any]:
        return [row['value'] for row in self.entries(kind, since)]


@dataclass
class Heard:
    """What the test process hears: the monitor's speed_scale, the adapters' diagnostics."""

    scales: list[float] = field(default_factory=list)
    diags: list[tuple[float, str, str, dict[str, str]]] = field(default_factory=list)

    def diag(self, name: str, since: float = 0.0) -> list[tuple[str, dict[str, str]]]:
        return [(level, values) for t, n, level, values in self.diags
                if n == name and t >= since]


def listen(harness: Any) -> Heard:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Float64

    from cobot_hybrid_ros.diagnostics import level_name

    heard = Heard()
    latched = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    harness.node.create_subscription(Float64, 'speed_scale',
                                     lambda m: heard.scales.append(m.data), latched)

    def on_diag(msg: Any) -> None:
        for s in msg.status:
            heard.diags.append((time.monotonic(), s.name, level_name(s.level),
                                {kv.key: kv.value for kv in s.values}))

    harness.node.create_subscription(DiagnosticArray, 'diagnostics', on_diag, 50)
    return heard


def start_driver(ros_process: Any, tmp_path: Path, *args: str) -> Record:
    record = Record(tmp_path / 'driver.jsonl')
    ros_process('fake_driver.py', '--record', str(record.path), *args)
    return record


def start_adapter(ros_process: Any, output: str, name: str = 'driver_adapter_node',
                  **params: Any) -> Any:
    """Start an adapter process; a renamed one gets only ``params`` (the YAML is keyed by name)."""
    overrides = [arg for key, value in {'output': output, **params}.items()
                 for arg in ('-p', f'{key}:={value}')]
    rename = [] if name == 'driver_adapter_node' else ['-r', f'__node:={name}']
    return ros_process(NODE, '--ros-args', '--params-file', str(ADAPTER_YAML), *rename,
                       *overrides, name=name)


class Feeder:
    """This test process as the monitor: publishes speed_scale and protective_stop."""

    def __init__(self, harness: Any) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Bool, Float64

        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.harness = harness
        self._float, self._bool = Float64, Bool
        self.scale = harness.node.create_publisher(Float64, 'speed_scale', latched)
        self.stop = harness.node.create_publisher(Bool, 'protective_stop', latched)

    def feed(self, scale: float, stop: bool, until: Any, timeout_s: float) -> bool:
        """Publish both every 50 ms (as the monitor does) until ``until()`` holds.

        The two topics arrive separately: a stop goes out before its scale, a scale before
        the end of a stop, so that no mix of old and new ever lets the robot move.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if stop:
                self.stop.publish(self._bool(data=stop))
            self.scale.publish(self._float(data=scale))
            if not stop:
                self.stop.publish(self._bool(data=stop))
            if self.harness.spin_until(until, 0.05):
                return True
        return bool(until())


def monitor_params(tmp_path: Path) -> str:
    path = tmp_path / 'safety_test.yaml'
    # 0.5 s of perception age, as test_safety_monitor_node: frames arrive late under load
    values = {'camera_to_base': CAMERA_TO_BASE, 'max_perception_age_s': 0.5}
    path.write_text(yaml.safe_dump({'safety_monitor_node': {'ros__parameters': values}}))
    return str(path)


def test_outputs_follow_the_monitor_and_hold_a_stop_once_it_is_killed(
        make_node: Any, ros_process: Any, tmp_path: Path) -> None:
    harness = make_node('adapter_listener')
    heard = listen(harness)
    record = start_driver(ros_process, tmp_path)
    start_adapter(ros_process, 'speed_scaling_factor')
    start_adapter(ros_process, 'stop_setbool', name='setbool_adapter', stop_service='set_stop')
    monitor = ros_process(MONITOR, '--ros-args', '--params-file', str(SAFETY_YAML),
                          '--params-file', monitor_params(tmp_path))
    detector = ros_process('synthetic_detector.py', '--start', '4.0')   # far: full speed

    def running() -> bool:
        return 1.0 in record.values('factor') and False in record.values('setbool')
    assert harness.spin_until(running, 60.0), (monitor.log(), detector.log(), record.entries)
    # What the driver got is what the monitor decided (0: the adapter's own stop at start).
    assert harness.spin_until(lambda: 1.0 in heard.scales, 5.0)
    assert set(record.values('factor')) <= set(heard.scales) | {0.0}, record.values('factor')
    assert record.values('setbool')[0] is True    # before the first message: stop

    monitor.kill()   # SIGKILL: no last word; the last thing it said was "full speed"
    killed_at = time.monotonic()
    assert harness.spin_until(lambda: 0.0 in record.values('factor', killed_at)
                              and True in record.values('setbool', killed_at), 10.0)
    first_zero = record.entries('factor', killed_at)[
        record.values('factor', killed_at).index(0.0)]['t']
    print(f'kill -> factor 0 at the driver after {1e3 * (first_zero - killed_at):.0f} ms')
    # Held: the factor keeps coming (the heartbeat), always 0, never the last value 1.0.
    assert harness.spin_until(lambda: len(record.values('factor', first_zero)) >= 10, 10.0)
    assert harness.spin_until(
        lambda: len(heard.diag('setbool_adapter: stop_setbool', first_zero)) >= 3, 10.0)
    assert set(record.values('factor', first_zero)) == {0.0}
    assert False not in record.values('setbool', first_zero)   # no resume without a monitor
    (level, values) = heard.diag('setbool_adapter: stop_setbool', first_zero)[-1]
    assert level == 'ERROR' and values['reason'] == 'silent', values
    assert values['commanded'] == 'true'
    factor_diag = heard.diag('driver_adapter_node: speed_scaling_factor', first_zero)
    assert factor_diag and factor_diag[-1][1]['reason'] == 'silent'


def test_slider_and_trigger_follow_stop_invalid_value_and_silence(
        make_node: Any, ros_process: Any, tmp_path: Path) -> None:
    harness = make_node('adapter_feeder')
    heard = listen(harness)
    feeder = Feeder(harness)
    record = start_driver(ros_process, tmp_path)
    # 1 s input timeout: this process publishes every 50 ms, but both cores are shared
    start_adapter(ros_process, 'ur_speed_slider', input_timeout_s=1.0)
    start_adapter(ros_process, 'stop_trigger', name='trigger_adapter', input_timeout_s=1.0,
                  stop_service='stop', resume_service='resume')
    # Before any input both tell the driver to stop.
    assert harness.spin_until(lambda: SLIDER_STOP in record.values('slider')
                              and record.entries('stop'), 60.0), record.path

    def slider_and_trigger(fraction: float, kind: str, since: float) -> Any:
        return lambda: fraction in record.values('slider', since) \
            and bool(record.entries(kind, since))

    t = time.monotonic()
    assert feeder.feed(0.6, False, slider_and_trigger(0.6, 'resume', t), 30.0)
    t = time.monotonic()   # a protective stop forces 0 whatever the scale says
    assert feeder.feed(0.6, True, slider_and_trigger(SLIDER_STOP, 'stop', t), 10.0)
    # (once the stop is in: the topics arrive separately, and a new scale could overtake it)
    assert feeder.feed(1.0, True, lambda: len(
        heard.diag('driver_adapter_node: ur_speed_slider', t)) >= 3, 10.0)
    assert 1.0 not in record.values('slider', t) and not record.entries('resume', t)
    assert heard.diag('driver_adapter_node: ur_speed_slider', t)[-1][1]['reason'] == 'stop'
    t = time.monotonic()
    assert feeder.feed(0.8, False, slider_and_trigger(0.8, 'resume', t), 10.0)
    t = time.monotonic()   # not a number: stop, held while it keeps coming
    assert feeder.feed(math.nan, False, slider_and_trigger(SLIDER_STOP, 'stop', t), 10.0)
    assert feeder.feed(math.nan, False, lambda: len(
        heard.diag('driver_adapter_node: ur_speed_slider', t)) >= 3, 10.0)
    assert record.values('slider', t) and set(record.values('slider', t)) == {SLIDER_STOP}
    assert not record.entries('resume', t)
    assert heard.diag('driver_adapter_node: ur_speed_slider', t)[-1][1]['reason'] == 'invalid'
    t = time.monotonic()
    assert feeder.feed(0.8, False, slider_and_trigger(0.8, 'resume', t), 10.0)

    silent_at = time.monotonic()   # the publisher goes quiet
    assert harness.spin_until(slider_and_trigger(SLIDER_STOP, 'stop', silent_at), 10.0)
    first_stop = min(row['t'] for row in record.entries('stop', silent_at))
    print(f'silence -> stop Trigger at the driver after {first_stop - silent_at:.2f} s '
          '(input_timeout_s 1.0 here)')
    # Held: the slider is re-sent every slider_resend_period_s (1 s), always the stop fraction.
    assert harness.spin_until(lambda: len(record.values('slider', silent_at)) >= 3, 10.0)
    assert set(record.values('slider', silent_at)) == {SLIDER_STOP}
    assert not record.entries('resume', silent_at)
    values = heard.diag('trigger_adapter: stop_trigger', silent_at)[-1][1]
    assert values['reason'] == 'silent' and values['commanded'] == 'stop', values
    assert all(row['success'] for row in record.entries('slider'))   # never below 0.01


def test_refused_missing_services_counted_bad_value_and_exit_zero_the_factor(
        make_node: Any, ros_process: Any, tmp_path: Path) -> None:
    harness = make_node('adapter_feeder')
    heard = listen(harness)
    feeder = Feeder(harness)
    record = start_driver(ros_process, tmp_path, '--refuse-first', '3')
    # 5 s input timeout: the 0 after Ctrl-C below must be the exit stop, not the silence
    factor = start_adapter(ros_process, 'speed_scaling_factor', input_timeout_s=5.0)
    slider = start_adapter(ros_process, 'ur_speed_slider', name='slider_adapter',
                           input_timeout_s=1.0)
    # 5 s input timeout: under load this process may pause the feed for longer than the
    # default, and the silence stop (commanded true) is not what this adapter is checked for.
    start_adapter(ros_process, 'stop_setbool', name='absent_adapter',
                  stop_service='no_driver_serves_this', input_timeout_s=5.0)

    def accepted(fraction: float) -> bool:
        return any(row['value'] == fraction and row['success']
                   for row in record.entries('slider'))

    assert feeder.feed(0.5, False, lambda: 0.5 in record.values('factor') and accepted(0.5),
                       60.0), record.path
    refused = [row for row in record.entries('slider') if not row['success']]
    assert len(refused) == 3    # each refusal was retried until the driver took it

    def slider_diag() -> list[dict[str, str]]:
        return [v for _, v in heard.diag('slider_adapter: ur_speed_slider')]
    # (more than 3 failed if the adapter called before it discovered the driver's service)
    assert feeder.feed(0.5, False, lambda: any(
        int(v['calls_failed']) >= 3 and v['confirmed'] == '0.500' for v in slider_diag()),
        10.0), (slider_diag(), slider.log())
    assert any('refused' in v['last_error'] for v in slider_diag()), slider_diag()

    def absent() -> list[tuple[str, dict[str, str]]]:
        return heard.diag('absent_adapter: stop_setbool')
    # A report while it is fed (under a loaded full run the feed can still pause past the
    # timeout: that report says commanded true, the silence stop, and is not this check's).
    def fed() -> list[tuple[str, dict[str, str]]]:
        return [(level, v) for level, v in absent()
                if int(v['calls_failed']) >= 2 and v['commanded'] == 'false']
    assert feeder.feed(0.5, False, lambda: bool(fed()), 20.0), absent()
    level, values = fed()[-1]
    assert level == 'ERROR' and 'not available' in values['last_error'], values
    assert values['confirmed'] == 'none'

    t = time.monotonic()   # infinite: the factor goes to 0, the slider to its stop fraction
    assert feeder.feed(math.inf, False, lambda: 0.0 in record.values('factor', t)
                       and accepted(SLIDER_STOP), 10.0)
    assert feeder.feed(math.inf, False,
                       lambda: len(record.values('factor', t)) >= 10, 10.0)
    zero_at = min(row['t'] for row in record.entries('factor', t) if row['value'] == 0.0)
    assert set(record.values('factor', zero_at)) == {0.0}
    factor_diag = heard.diag('driver_adapter_node: speed_scaling_factor', t)
    assert factor_diag and factor_diag[-1][1]['reason'] == 'invalid'

    t = time.monotonic()   # valid again: resumed; then Ctrl-C (a launch shutdown) on the adapter
    assert feeder.feed(0.7, False, lambda: 0.7 in record.values('factor', t), 10.0)
    stopped_at = time.monotonic()
    assert factor.stop() == 0, factor.log()
    assert harness.spin_until(lambda: record.values('factor', stopped_at)[-1:] == [0.0], 3.0), \
        (record.values('factor', stopped_at), factor.log())   # its last word was a stop


def test_a_stop_reaches_a_slow_driver_while_an_earlier_call_is_unanswered(
        make_node: Any, ros_process: Any, tmp_path: Path) -> None:
    harness = make_node('adapter_feeder')
    heard = listen(harness)
    feeder = Feeder(harness)
    # The driver runs a resume at once but answers it only after 600 s (never, in this test).
    record = start_driver(ros_process, tmp_path, '--slow', 'resume', '--answer-delay-s', '600')
    # call_timeout_s 60: a stop that waited for the resume's answer or its timeout could not
    # reach the driver within this test's waits.
    adapter = start_adapter(ros_process, 'stop_trigger', name='slow_adapter',
                            input_timeout_s=1.0, call_timeout_s=60.0, stop_service='stop',
                            resume_service='resume')
    assert harness.spin_until(lambda: record.entries('stop'), 60.0), adapter.log()
    t = time.monotonic()
    assert feeder.feed(1.0, False, lambda: bool(record.entries('resume', t)), 30.0), \
        adapter.log()
    decided = time.monotonic()   # the monitor says stop; the resume is still unanswered
    assert feeder.feed(0.0, True, lambda: bool(record.entries('stop', decided)), 10.0), \
        (record.entries('stop'), adapter.log())
    assert not record.entries('answered')   # the stop arrived while the resume was unanswered

    def preempted() -> bool:
        return any(v['calls_preempted'] == '1' and v['confirmed'] == 'stop'
                   for _, v in heard.diag('slow_adapter: stop_trigger', decided))
    assert feeder.feed(0.0, True, preempted, 10.0), heard.diag('slow_adapter: stop_trigger')

    t = time.monotonic()   # moving again: a second resume, unanswered too; then Ctrl-C
    assert feeder.feed(1.0, False, lambda: bool(record.entries('resume', t)), 10.0)
    stopped_at = time.monotonic()
    assert adapter.stop() == 0, adapter.log()
    assert harness.spin_until(lambda: record.entries('stop', stopped_at), 5.0), \
        adapter.log()   # the exit stop was not skipped
    assert not record.entries('answered')
