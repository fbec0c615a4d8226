"""`cobot-hybrid profile`: a real graph measured from outside, checked against its own numbers.

The detector, safety monitor and a camera run as separate ROS processes; the profiler joins the
graph, counts messages and bytes per topic, reads the processes' CPU and memory, and places
each workload. What it measured independently (the detections' rate, the image bytes) is
compared with what the nodes report about themselves in their diagnostics.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import child_env
from hypothesis import given
from hypothesis import strategies as st
from test_detector_node import PERCEPTION_YAML, SOURCE
from test_safety_monitor_node import start_monitor

from cobot_hybrid_ros.link_probe import probe
from cobot_hybrid_ros.placement import Link, Workload, place

DETECTOR = 'cobot_hybrid_perception.nodes.detector_node'


def own_rate(status: dict[str, Any]) -> float:
    """Frames per second a node says it processed between two of its diagnostics."""
    done = float(status['values']['processed']) - float(status['first_values']['processed'])
    span = status['last_at'] - status['first_at']
    assert span > 1.0, status
    return done / span


def run_profile(domain: int, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', 'profile', *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          env=child_env(domain), cwd=tmp_path)


@pytest.mark.ros
def test_profile_measures_the_graph_and_agrees_with_the_nodes_own_diagnostics(
        make_node: Any, ros_process: Any, ros_domain_id: int, tmp_path: Path) -> None:
    from diagnostic_msgs.msg import DiagnosticArray

    harness = make_node('profile_witness')
    fps: list[float] = []

    def on_diag(msg: Any) -> None:
        for status in msg.status:
            if status.name == 'detector_node: inference':
                values = {kv.key: kv.value for kv in status.values}
                if float(values['processed']) > 10:
                    fps.append(float(values['fps']))
    harness.node.create_subscription(DiagnosticArray, 'diagnostics', on_diag, 20)
    start_monitor(ros_process, tmp_path, max_perception_age_s=0.3)
    ros_process(DETECTOR, '--ros-args', '--params-file', str(PERCEPTION_YAML), '-p',
                'backend:=ort-cpu', '-p', 'threads:=1', '-p', 'imgsz:=320')
    ros_process(SOURCE, '--ros-args', '-p', 'source:=samples', '-p', 'rate_hz:=4.0')
    assert harness.spin_until(lambda: len(fps) >= 1, 60.0)
    out = tmp_path / 'profile'
    result = run_profile(ros_domain_id, tmp_path, '--seconds', '5', '--out', str(out),
                         '--rtt-ms', '40', '--uplink-mbps', '20')
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    harness.spin_for(1.0)
    data = json.loads((out / 'profile.json').read_text())
    topics = data['sample']['topics']
    # The camera's rate and bytes, measured by counting: 4 Hz of the sample photos.
    image = topics['/image']
    assert 3.0 <= image['rate_hz'] <= 5.0, image
    assert image['mean_message_bytes'] >= 400 * 600 * 3   # the smallest photo, bgr8
    # The detections' rate counted by the profiler agrees with the detector's own count of
    # the frames it processed over the same window.
    own = own_rate(data['sample']['diagnostics']['detector_node: inference'])
    assert math.isclose(topics['/detections']['rate_hz'], own, rel_tol=0.3), (
        topics['/detections'], own)
    processes = data['sample']['processes']
    assert processes['/detector_node']['cpu_cores'] > 0.02, processes
    assert processes['/detector_node']['rss_mb'] > 50, processes
    rows = {row['name']: row for row in data['decision_matrix']}
    detection = rows['person detection']
    # The deadline is the monitor's own limit, the latency the detector's own diagnostics.
    assert detection['deadline_s'] == pytest.approx(0.3)
    assert 'safety_monitor_node' in detection['deadline_source']
    diag = data['sample']['diagnostics']['detector_node: inference']['values']
    assert detection['edge_latency_s'] == pytest.approx(float(diag['total_ms_p50']) / 1e3)
    assert detection['input_topic'] == '/image'
    assert detection['input_bytes_per_s'] == pytest.approx(image['bytes_per_s'])
    assert detection['placement'] == 'edge' and 'safety function' in detection['reason']
    # Sending the camera to the cloud: 4 Hz of ~1 MB frames is terabytes a month.
    assert detection['egress_gb_month'] == pytest.approx(
        image['bytes_per_s'] * 30 * 86400 / 1e9)
    assert rows['speed and separation monitoring']['placement'] == 'edge'
    assert '| person detection |' in (out / 'decision_matrix.md').read_text()

    # The same recording placed again for a link that never drops: the round trip decides.
    again = run_profile(ros_domain_id, tmp_path, '--from', str(out / 'profile.json'),
                        '--rtt-ms', '40', '--uplink-mbps', '20', '--link-never-drops', '--json')
    assert again.returncode == 0, again.stderr
    replaced = {r['name']: r for r in json.loads(again.stdout)['decision_matrix']}
    assert replaced['person detection']['placement'] == 'edge'
    assert 'must work offline' in replaced['person detection']['reason']


def test_a_recorded_profile_that_is_not_one_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / 'bad.json'
    bad.write_text('{"sample": 3}')
    result = run_profile(0, tmp_path, '--from', str(bad))
    assert result.returncode == 2 and 'has no "sample"' in result.stderr, result.stderr
    bad.write_text('not json')
    assert 'is not a profile JSON' in run_profile(0, tmp_path, '--from', str(bad)).stderr


@pytest.mark.broker
def test_the_link_probe_measures_a_real_broker(mosquitto_broker: Any) -> None:
    measured = probe(mosquitto_broker.host, mosquitto_broker.port, pings=5, bulk_count=2)
    assert 0 < measured['rtt_s'] < 5 and measured['uplink_bytes_per_s'] > 0
    assert str(mosquitto_broker.port) in measured['source']


def test_the_rule() -> None:
    link = Link(rtt_s=0.05, uplink_bytes_per_s=2.5e6, may_drop=False)
    heavy_tolerant = Workload('batch analysis', '/x', deadline_s=60.0, cpu_cores=1.5,
                              input_bytes_per_s=1e4, input_message_bytes=1e5)
    assert place(heavy_tolerant, link).placement == 'cloud'
    light = Workload('light', '/x', deadline_s=60.0, cpu_cores=0.05)
    assert place(light, link).placement == 'edge'
    tight = Workload('tight', '/x', deadline_s=0.03, cpu_cores=2.0)
    assert 'under the cloud round trip' in place(tight, link).reason
    fat = Workload('fat', '/x', deadline_s=60.0, cpu_cores=2.0, input_bytes_per_s=1e7)
    assert place(fat, link).placement == 'edge' and 'MB/s up' in place(fat, link).reason
    safety = Workload('stop', '/x', deadline_s=60.0, cpu_cores=2.0, safety=True)
    assert place(safety, Link(0.05, 2.5e6, may_drop=True)).placement == 'edge'
    assert place(safety, link).placement == 'edge'   # a link that never drops: still edge
    fleet = Workload('plan', '/x', fleet=True)
    assert place(fleet, link).placement == 'cloud'
    assert place(Workload('?', '/x'), link).placement == 'unknown'
    row = place(heavy_tolerant, link)
    assert row.egress_gb_month == pytest.approx(1e4 * 30 * 86400 / 1e9)
    assert row.cloud_round_trip_s == pytest.approx(0.05 + 1e5 / 2.5e6)


@given(deadline=st.floats(0.0, 1e6), cores=st.floats(0.0, 64.0), rate=st.floats(0.0, 1e9),
       rtt=st.floats(0.0, 10.0), uplink=st.floats(0.0, 1e10), may_drop=st.booleans(),
       fleet=st.booleans())
def test_a_safety_function_is_never_placed_in_the_cloud(
        deadline: float, cores: float, rate: float, rtt: float, uplink: float,
        may_drop: bool, fleet: bool) -> None:
    work = Workload('safety', '/x', deadline_s=deadline, cpu_cores=cores, safety=True,
                    fleet=fleet, input_bytes_per_s=rate, input_message_bytes=rate)
    assert place(work, Link(rtt, uplink, may_drop)).placement == 'edge'


def test_a_loopback_link_or_a_negative_number_never_divides_by_zero() -> None:
    heavy = Workload('a', '/n', deadline_s=1.0, cpu_cores=1.0)
    assert place(heavy, Link(rtt_s=0.0, may_drop=False)).placement == 'cloud'
    assert place(heavy, Link(rtt_s=-0.05, may_drop=False)).placement == 'unknown'
    assert place(Workload('a', '/n', deadline_s=-5.0, cpu_cores=1.0),
                 Link(0.05, 1e6, may_drop=False)).placement == 'unknown'


def test_a_special_file_is_not_read_as_a_profile(tmp_path: Path) -> None:
    result = run_profile(0, tmp_path, '--from', '/dev/zero')
    assert result.returncode == 2 and 'not a regular file' in result.stderr, result.stderr


def test_negative_or_huge_diagnostics_readings_are_not_numbers() -> None:
    from cobot_hybrid_ros.graph_profile import link_from

    for reading in ('-50', '1e308', 'nan', 'x'):
        data = {'diagnostics': {'bridge_node: link': {'values': {'rtt_ms': reading}}}}
        assert math.isnan(link_from(data).rtt_s)
