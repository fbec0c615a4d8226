"""`make demo`: the whole edge-cloud loop on one machine, with a link outage in the middle.

Edge (each its own ROS process, Fast DDS on loopback): ``image_source_node`` (a scene made of
real photos shipped in installed packages: an empty workbench for 3 s, then people for 1 s,
and again; or ``--source`` a video/folder) -> ``detector_node`` (the default YOLO11n-pose
model, ONNX Runtime) -> ``safety_monitor_node`` -> ``bridge_node`` (durable queue) -> a TCP
link -> mosquitto on 127.0.0.1 -> ``planner_node`` (cloud), which plans a short work order and
sends a signed mission back down to the robot's ROS ``mission`` topic, where
``mission_executor_node`` runs it at the speed the safety monitor allows and reports task
progress back up, closing the loop. ``static_transform_node`` places the robot in the site
(``map -> base_link``) and the safety monitor the camera (``base_link ->
camera_optical_frame``): watch it with ``rviz2 -d share/cobot_hybrid/rviz/cobot_hybrid.rviz``;
the demo checks that TF connects every frame it hears published to rviz's fixed frame.
Midway the link is cut for ``--outage`` seconds: the robot
keeps detecting, keeps its safety loop, keeps working and queues.

Before it starts, the demo times the detector on this machine and picks the settings that fit
the safety monitor's perception age limit (:func:`choose_settings`): the network input, the
camera resolution and rate. At the end it reports how long the robot was stopped or slowed
per cause (from the monitor's own diagnostics) and both nodes' perception budget, and fails
when the robot was stopped for stale perception more than ``--max-stale-share`` of the run.

The cloud's offload side runs beside the planner (docs/offload.md): two ``cobot-hybrid
worker`` replicas split the robot's stop snapshots through the MQTT 5 shared subscription
and look again (640 + 1280, mirrored), comparing with the robot's detections; where the
edge was wrong they send a signed advisory the robot shows on ``advisories``. ``cobot-hybrid
history record`` keeps the robot's uplink, and at the end ``cobot-hybrid history report``
writes the run's fleet report (``demo_out/fleet_report/report.html``). The demo fails when a
snapshot was not analysed.

At the end: a report, and
``demo_out/report.html`` with plots (per-stage latency, speed scale with the tasks done, bytes
up vs raw camera bytes, queue depth, messages committed / delivered / lost, missions issued
and acknowledged, tasks done).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
from fault_proxy import FaultProxy  # noqa: E402
from local_broker import start_mosquitto  # noqa: E402
from loopback_env import configure_ros_environment  # noqa: E402

from cobot_hybrid_perception.safety_replay import monitor_topics  # noqa: E402
from cobot_hybrid_protocol.topics import DELIVERED, STATUS, parse_topic, robot_filter  # noqa: E402

RVIZ_CONFIG = ROOT / 'rviz' / 'cobot_hybrid.rviz'


def rviz_fixed_frame() -> str:
    """Return the fixed frame of the shipped rviz config (every published frame must reach it)."""
    import yaml

    data = yaml.safe_load(RVIZ_CONFIG.read_text())
    return str(data['Visualization Manager']['Global Options']['Fixed Frame'])

ROBOT = 'cobot-1'
#: The camera the scene is shown through (frames resized to this width, aspect kept): what a
#: cobot's wrist or cell camera sends at VGA, and a tenth of the bytes of the 1080p photos.
CAMERA_WIDTH = 640
#: Camera rates the demo may pick from [Hz] (higher: fresher frames, more load).
CAMERA_RATES = (15.0, 12.0, 10.0, 7.5, 5.0)
#: The demo's processes share this machine's cores with the detector: its latency in the run
#: is taken as this many times what it measured alone (2 cores, 8 processes).
LOAD_FACTOR = 2.0
#: Share of the age limit the predicted peak may take (the slowest frames must still fit).
FIT_SHARE = 0.7
#: Age limits the demo may raise the monitor's to when the default does not fit here [s].
LIMITS_S = (0.25, 0.3, 0.4, 0.5)
# The demo's work order: short tasks, so some finish within a minute at the speed allowed.
DEMO_ORDER = {'schema': 'cobot_hybrid/orders/v1', 'order_id': 'demo', 'tasks': [
    {'task_id': 'unload-1', 'type': 'pick', 'station': 'press-1', 'capability': 'pick',
     'duration_s': 3, 'priority': 5},
    {'task_id': 'check-1', 'type': 'inspect', 'station': 'inspect', 'capability': 'inspect',
     'duration_s': 3, 'after': ['unload-1']},
    {'task_id': 'unload-2', 'type': 'pick', 'station': 'press-2', 'capability': 'pick',
     'duration_s': 3},
    {'task_id': 'stack', 'type': 'place', 'station': 'tray', 'capability': 'place',
     'duration_s': 3, 'after': ['check-1']}]}


def camera_frame(name: str) -> Any:
    """Return a sample photo as the demo's camera sees it: bgr8, CAMERA_WIDTH wide."""
    import cv2

    from cobot_hybrid_perception.media import load_image, sample_photo_path

    image = load_image(sample_photo_path(name), 'bgr8')
    height, width = image.shape[:2]
    size = (CAMERA_WIDTH, max(1, round(height * CAMERA_WIDTH / width)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def build_scene(folder: Path, rate_hz: float) -> str:
    """Make a folder of frames: 3 s of an empty bench (coffee), 1 s of people, repeated.

    Returns the source for image_source_node ('samples' if the photos are not installed).
    """
    import cv2

    from cobot_hybrid_perception.media import available_samples

    names = available_samples()
    people = [n for n in ('bus', 'zidane', 'astronaut') if n in names]
    if 'coffee' not in names or not people:
        return 'samples'
    folder.mkdir(parents=True, exist_ok=True)
    stills = folder / 'stills'
    stills.mkdir()
    index = 0
    for person in people:
        for name, seconds in (('coffee', 3.0), (person, 1.0)):
            still = stills / f'{name}.png'
            if not still.exists():
                cv2.imwrite(str(still), camera_frame(name))
            for _ in range(round(seconds * rate_hz)):
                (folder / f'{index:04d}_{name}.png').symlink_to(still)
                index += 1
    return str(folder)


def choose_settings(limit_s: float) -> dict[str, Any]:
    """Time the detector here; pick the input size, camera rate and age limit that fit.

    The perception age the safety monitor sees peaks at the camera period plus the detector's
    latency, and a frame that arrives while the detector is busy waits up to one more latency:
    ``1 / rate + 2 * LOAD_FACTOR * p99`` must stay within ``FIT_SHARE`` of the limit (the
    demo must not stop on the slowest frames). The monitor's own limit ``limit_s`` first: the
    larger input when it fits at some rate, else 320, at the slowest rate that fits (less load
    on the shared cores). When nothing fits, the smallest larger limit of ``LIMITS_S`` that
    does, with its cost: S_p grows by the human speed times the extra age.
    """
    from cobot_hybrid_perception.detector import Detector, DetectorConfig
    from cobot_hybrid_perception.perception_budget import percentile
    from cobot_hybrid_perception.safety_pipeline import SafetyConfig

    frame = camera_frame('bus')
    measured: dict[int, float] = {}
    for imgsz in (640, 320):
        detector = Detector(DetectorConfig(backend='ort-cpu', imgsz=imgsz, threads=1))
        try:
            times = []
            for i in range(25):
                start = time.perf_counter()
                detector.detect(frame)
                if i >= 5:   # the first runs initialise lazily
                    times.append(time.perf_counter() - start)
        finally:
            detector.close()
        measured[imgsz] = percentile(times, 0.99)
    alone = (f'detector p99 alone here: 640 {1e3 * measured[640]:.0f} ms, 320 '
             f'{1e3 * measured[320]:.0f} ms, x{LOAD_FACTOR:g} for the shared cores')
    human = SafetyConfig().human_speed_far_mps
    for limit in sorted({limit_s, *(v for v in LIMITS_S if v > limit_s)}):
        for imgsz in (640, 320):
            busy = 2 * LOAD_FACTOR * measured[imgsz]
            fitting = [r for r in CAMERA_RATES if 1.0 / r + busy <= FIT_SHARE * limit
                       and 1.0 / r > LOAD_FACTOR * measured[imgsz]]   # it keeps up
            if not fitting:
                continue
            rate = min(fitting)
            why = (f'{alone}: imgsz {imgsz} at {rate:g} Hz peaks at ~'
                   f'{1e3 * (1.0 / rate + busy):.0f} ms, max_perception_age_s {limit:.2f} s')
            if limit > limit_s:
                why += (f' (the default {limit_s:.2f} s does not fit this machine; S_p is '
                        f'{human * (limit - limit_s):.2f} m larger for it)')
            return {'imgsz': imgsz, 'rate_hz': rate, 'limit_s': limit, 'why': why}
    limit = max(LIMITS_S)
    return {'imgsz': 320, 'rate_hz': max(CAMERA_RATES), 'limit_s': limit,
            'why': f'{alone}: nothing fits even at max_perception_age_s {limit:.2f} s: '
                   'expect stops for stale perception'}


def safety_limit_s() -> float:
    """Return the max_perception_age_s of the demo's safety monitor (its default)."""
    from cobot_hybrid_perception.safety_pipeline import SafetyConfig

    return SafetyConfig().max_perception_age_s


def make_keys(workdir: Path) -> tuple[Path, Path]:
    """Make an Ed25519 key pair: the planner signs, the robot verifies."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )
    key = Ed25519PrivateKey.generate()
    private, public = workdir / 'planner.pem', workdir / 'planner.pub'
    private.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM,
                                                     PublicFormat.SubjectPublicKeyInfo))
    return private, public


class Cloud:
    """Everything that reaches the broker under cobot/v1/#: seqs and bytes per topic."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.seqs: set[int] = set()
        self.duplicates = 0
        self.bytes_up = 0
        self.by_topic: dict[str, int] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='demo-cloud',
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(robot_filter(ROBOT), 1)
        self.client.on_message = self._on_message
        self.client.connect('127.0.0.1', port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        where = parse_topic(message.topic)
        if where.is_command or where.kind in (STATUS, DELIVERED):
            return
        props = dict(getattr(message.properties, 'UserProperty', []) or [])
        with self.lock:
            self.bytes_up += len(message.payload)
            kind = message.topic.split('/', 3)[-1]
            self.by_topic[kind] = self.by_topic.get(kind, 0) + 1
            if 'seq' in props:
                seq = int(props['seq'])
                if seq in self.seqs:
                    self.duplicates += 1
                self.seqs.add(seq)

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


def queue_stats(path: Path) -> dict[str, Any] | None:
    """Read the bridge's queue counters (None before the file exists)."""
    from cobot_hybrid_bridge.durable_queue import QueueError, open_readonly_stats

    try:
        stats = open_readonly_stats(path)
    except (QueueError, sqlite3.Error):
        return None
    return {'committed': stats.committed, 'delivered': stats.delivered,
            'queued': stats.queued, 'dropped': sum(stats.dropped.values()),
            'next_seq': stats.next_seq}


def ledger(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read the planner's ledger: missions (version, acknowledgement) and task statuses."""
    if not path.is_file():
        return {}, {}
    db = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
    try:
        missions = db.execute('SELECT robot_id, version, acked FROM missions').fetchall()
        tasks = db.execute('SELECT task_id, status FROM tasks').fetchall()
    except sqlite3.Error:
        missions, tasks = [], []
    finally:
        db.close()
    return {r: {'version': v, 'acked': a} for r, v, a in missions}, dict(tasks)


class RobotSide:
    """This process on the robot's ROS graph: camera info, robot speed, what it observes."""

    def __init__(self) -> None:
        import rclpy
        from cobot_hybrid_msgs.msg import Mission, TaskProgress
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import TwistStamped
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from std_msgs.msg import Bool, Float64
        from vision_msgs.msg import Detection2DArray

        from cobot_hybrid_ros.frames import FrameWatcher

        rclpy.init()
        self.node = rclpy.create_node('demo_robot_side')
        self.watcher = FrameWatcher(self.node)
        self._discovered_at = 0.0
        self.t0 = time.monotonic()
        self.scale: list[tuple[float, float]] = []
        self.stages: dict[str, list[float]] = {}
        self.raw_bytes = 0
        self.frames = 0
        self.detections = 0
        self.people = 0
        self.stops = 0
        self.monitor_values: dict[str, str] = {}
        # Arrival times (demo clock) of images and detections: where perception went quiet.
        self.image_times: list[float] = []
        self.detection_times: list[float] = []
        self.budgets: dict[str, tuple[int, str]] = {}
        self.missions: list[Any] = []   # cobot_hybrid_msgs/Mission as the robot got them
        self.progress: list[tuple[float, str, str]] = []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.info_pub = self.node.create_publisher(CameraInfo, 'camera_info', 10)
        self.speed_pub = self.node.create_publisher(TwistStamped, 'robot_speed', 10)
        self._camera_info = CameraInfo
        self._twist = TwistStamped
        node = self.node
        # Raw: only the header and size are read, so this process does not deserialize ~1 MB
        # images at the camera rate on the cores the detector needs.
        node.create_subscription(Image, 'image', self._on_image, 10, raw=True)
        node.create_subscription(Detection2DArray, 'detections', self._on_detections, 10)
        node.create_subscription(Float64, 'speed_scale', lambda m: self.scale.append(
            (time.monotonic() - self.t0, m.data)), latched)
        node.create_subscription(Bool, 'protective_stop', self._on_stop, latched)
        node.create_subscription(DiagnosticArray, 'diagnostics', self._on_diag, 10)
        node.create_subscription(Mission, 'mission', self.missions.append, latched)
        node.create_subscription(TaskProgress, 'task_progress', self._on_progress, 100)
        self.advisories: list[Any] = []   # verified cloud advisories the bridge showed
        node.create_subscription(DiagnosticArray, 'advisories', self.advisories.append, 10)
        self._last_stop = False

    def _on_image(self, raw: bytes) -> None:
        import struct

        # CDR (little endian after the 4-byte encapsulation): stamp sec, nanosec, frame_id
        # (length, characters, NUL), padded to 4, then height and width.
        sec, nanosec, length = struct.unpack_from('<iII', raw, 4)
        frame_id = raw[16:16 + length - 1].decode('utf-8', 'replace')
        offset = 16 + length + (-(16 + length) % 4)
        height, width = struct.unpack_from('<II', raw, offset)
        self.frames += 1
        self.raw_bytes += len(raw)
        self.image_times.append(time.monotonic() - self.t0)
        info = self._camera_info(width=width, height=height)
        info.header.stamp.sec, info.header.stamp.nanosec = sec, nanosec
        info.header.frame_id = frame_id   # a calibrated camera: K from the image size
        f = float(max(width, height))
        info.k = [f, 0.0, width / 2.0, 0.0, f, height / 2.0, 0.0, 0.0, 1.0]
        self.info_pub.publish(info)
        twist = self._twist()
        twist.header.stamp = info.header.stamp
        twist.twist.linear.x = 0.3
        self.speed_pub.publish(twist)

    def _on_progress(self, msg: Any) -> None:
        self.progress.append((time.monotonic() - self.t0, msg.task_id, msg.status))

    def _on_detections(self, msg: Any) -> None:
        self.detections += 1
        self.detection_times.append(time.monotonic() - self.t0)
        self.people += sum(1 for d in msg.detections
                           if d.results and d.results[0].hypothesis.class_id == 'person')

    def _on_stop(self, msg: Any) -> None:
        if msg.data and not self._last_stop:
            self.stops += 1
        self._last_stop = msg.data

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            if status.name == 'safety_monitor_node: ssm':
                self.monitor_values = {kv.key: kv.value for kv in status.values}
            if 'perception budget' in status.name:
                level = status.level[0] if isinstance(status.level, bytes) else status.level
                self.budgets[status.name] = (int(level), status.message)
            if status.name == 'detector_node: inference':
                for kv in status.values:
                    if kv.key.endswith('_ms_p50'):
                        self.stages.setdefault(kv.key[:-7], []).append(float(kv.value))

    def spin_for(self, seconds: float) -> None:
        """Process ROS callbacks for a while."""
        import rclpy

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if time.monotonic() - self._discovered_at > 1.0:
                self.watcher.discover()   # topics that appeared: hear their frames too
                self._discovered_at = time.monotonic()
            rclpy.spin_once(self.node, timeout_sec=0.02)

    def close(self) -> None:
        """Leave the ROS graph."""
        import rclpy

        self.node.destroy_node()
        rclpy.try_shutdown()


def stop_report(robot: RobotSide, run_s: float, max_stale_share: float) -> dict[str, Any]:
    """Time stopped and slowed per cause (the monitor's own counters) and the budgets."""
    times = {key.removeprefix('time_s.'): float(value)
             for key, value in robot.monitor_values.items() if key.startswith('time_s.')}
    stopped = {key.split('.', 1)[1]: secs for key, secs in times.items()
               if key.startswith('PROTECTIVE_STOP.')}
    slowed = sum(secs for key, secs in times.items() if key.startswith('SLOW.'))
    # Stale perception costs the stale time itself, then fault_recovery_s of recovering and
    # the hold before the speed rises again: all three are charged to it.
    stale = sum(secs for cause, secs in stopped.items()
                if cause == 'stale_perception' or cause.endswith('.stale_perception'))
    people = stopped.get('person', 0.0) + slowed
    total_stopped = sum(stopped.values())
    verdict = ('dominated by people' if people > stale else
               'dominated by stale perception: the detector does not fit the budget here')
    levels = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}
    def gaps(times: list[float]) -> str:
        pairs = sorted(((b - a, a) for a, b in zip(times, times[1:], strict=False)),
                       reverse=True)[:3]
        return ', '.join(f'{1e3 * gap:.0f} ms at t={at:.1f} s' for gap, at in pairs) or '-'
    return {
        'longest gaps: images': gaps(robot.image_times),
        'longest gaps: detections': gaps(robot.detection_times),
        'time stopped per cause [s]': json.dumps({k: round(v, 1) for k, v in
                                                   sorted(stopped.items())}),
        'time slowed by people [s]': round(slowed, 1),
        'stops and slow-downs': f'{verdict} (people {people:.1f} s, stale perception '
                                f'{stale:.1f} s)',
        'stopped for stale perception': f'{100 * stale / max(run_s, 1e-9):.1f} % of the run '
                                        f'(at most {100 * max_stale_share:.1f} %; its recovery '
                                        'and hold included)',
        'stopped in total': f'{total_stopped:.1f} s ({100 * total_stopped / max(run_s, 1e-9):.0f}'
                            ' % of the run, the start before the camera included)',
        'stale share': stale / max(run_s, 1e-9),
        'perception budget (detector)': ' '.join(
            f'{levels.get(lvl, lvl)}: {msg}' for name, (lvl, msg) in robot.budgets.items()
            if name.endswith('detector_node')) or 'no status heard',
        'perception budget (monitor)': ' '.join(
            f'{levels.get(lvl, lvl)}: {msg}' for name, (lvl, msg) in robot.budgets.items()
            if name.startswith('safety_monitor_node')) or 'no status heard',
    }


def tf_verdict(watcher: Any) -> str:
    """'complete: ...' when TF connects every frame heard to rviz's fixed frame, else what not."""
    root = rviz_fixed_frame()
    missing = watcher.unconnected(root)
    conflicts = watcher.tree.conflicts()
    if conflicts:
        return 'INCOMPLETE: ' + '; '.join(conflicts)
    if missing:
        return 'INCOMPLETE: ' + '; '.join(f'{frame} (on {", ".join(sorted(topics))}) has no '
                                          f'transform to {root}'
                                          for frame, topics in missing.items())
    return f'complete: {", ".join(sorted(watcher.frames))} all reach {root}'


#: Niceness of the processes off the safety path (cloud, bridge, executor, frames): a robot
#: gives its camera, detector and safety monitor priority the same way (or chrt).
BACKGROUND_NICE = 10


def start(command: list[str], log: Path, nice: int = 0) -> subprocess.Popen[bytes]:
    """Start a child process with its output in a log file, at ``nice`` (0: as this one)."""
    import os

    with log.open('wb') as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                preexec_fn=(lambda: os.nice(nice)) if nice else None)


def replay_bag(bag: Path, params: Path, out: Path) -> str:
    """Replay the run's safety bag into the monitor's core; one line on how it compared."""
    command = [sys.executable, '-m', 'cobot_hybrid_cli', 'replay', str(bag), '--params',
               str(params), '--json']
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            check=False)
    out.write_text(result.stdout + result.stderr)
    again = f'cobot-hybrid replay {bag} --params {params}'
    try:
        summary = json.loads(result.stdout)
    except ValueError:
        return f'not replayed: {(result.stderr or result.stdout).strip()[-300:]} ({again})'
    counts = f'{summary["matched"]} of {summary["compared"]} decisions'
    if result.returncode == 0 and summary.get('ok'):
        return f'same decisions: {counts} ({again})'
    return f'DIFFERENT: {counts} matched, see {out} ({again})'


def worker_results(work: Path) -> list[tuple[Any, ...]]:
    """Return the workers' stored results: (seq, worker, attempts, result JSON)."""
    db = work / 'workers' / 'ledger.db'
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f'file:{db}?mode=ro', uri=True, timeout=5) as conn:
            return conn.execute('SELECT seq, worker, attempts, result FROM results').fetchall()
    except sqlite3.Error:
        return []


def offload_report(work: Path, out: Path, sent: int, robot: RobotSide) -> dict[str, str]:
    """Report the offload side of the run: snapshots analysed, advisories, the fleet report.

    The history is sealed (today included) and ``cobot-hybrid history report`` writes the
    fleet report of the run to ``out/fleet_report``.
    """
    results = worker_results(work)
    verdicts: dict[str, int] = {}
    for _, _, _, text in results:
        verdict = json.loads(text).get('verdict', '?')
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
    db = work / 'workers' / 'ledger.db'
    takers: dict[str, int] = {}
    if db.is_file():
        with sqlite3.connect(f'file:{db}?mode=ro', uri=True, timeout=5) as conn:
            takers = dict(conn.execute('SELECT taken_by, COUNT(*) FROM jobs GROUP BY taken_by'))
    seqs = {r[0] for r in results}
    analysed = (f'{"all" if sent and len(seqs) >= sent else "only"} {len(seqs)} of {sent} '
                f'({json.dumps(verdicts)}; taken by {json.dumps(takers)})')
    history = work / 'history'
    subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', 'history', 'seal', '--today-too',
                    '--data-dir', str(history)], capture_output=True, timeout=120, check=False)
    day = time.strftime('%Y-%m-%d', time.gmtime())
    fleet = out / 'fleet_report'
    shutil.rmtree(fleet, ignore_errors=True)
    done = subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', 'history', 'report',
                           '--data-dir', str(history), '--first', day, '--last', day,
                           '--out', str(fleet)], capture_output=True, text=True, timeout=300,
                          check=False)
    if done.returncode == 0:
        data = json.loads((fleet / 'report.json').read_text())
        row = data['robot_days'][0] if data['robot_days'] else {}
        stopped = {k: round(v, 1) for k, v in row.get('stopped_s', {}).items() if v}
        summary = (f'{fleet / "report.html"}: stopped {json.dumps(stopped)} s, '
                   f'{row.get("bytes_up", 0) / 1e3:.0f} kB up')
    else:
        summary = f'not written: {(done.stdout + done.stderr).strip()[-300:]}'
    return {'snapshots analysed in the cloud': analysed,
            'advisories shown on the robot': str(len(robot.advisories)),
            'fleet report (cobot-hybrid history)': summary}


def ros_node(module: str, *params: str) -> list[str]:
    """Command line of a node module with ``-p`` parameters."""
    command = [sys.executable, '-m', module, '--ros-args']
    for param in params:
        command += ['-p', param]
    return command


def write_html(out: Path, report: dict[str, Any], robot: RobotSide,
               depth: list[tuple[float, int]], outage: tuple[float, float]) -> None:
    """Write the report page with its plots inlined as PNG."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    def png(fig: Any) -> str:
        buffer = io.BytesIO()
        fig.savefig(buffer, format='png', dpi=90, bbox_inches='tight')
        plt.close(fig)
        return base64.b64encode(buffer.getvalue()).decode()

    figs = []
    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(robot.stages)
    ax.bar(names, [sorted(v)[len(v) // 2] if v else 0 for v in robot.stages.values()])
    ax.set_ylabel('ms (p50)')
    ax.set_title('detector per-stage latency')
    figs.append(png(fig))
    fig, ax = plt.subplots(figsize=(6, 3))
    if robot.scale:
        ax.step([t for t, _ in robot.scale], [s for _, s in robot.scale], where='post')
    ax.axvspan(*outage, color='red', alpha=0.15, label='link down')
    for index, (at, task, _) in enumerate(e for e in robot.progress if e[2] == 'done'):
        ax.axvline(at, color='green', linestyle='--', label='task done' if not index else None)
        ax.annotate(task, (at, 0.5), rotation=90, fontsize=7, va='center', ha='right')
    ax.set_xlabel('s')
    ax.set_ylabel('speed scale')
    ax.set_title('speed scale (safety monitor) and tasks done: it runs through the outage')
    ax.legend()
    figs.append(png(fig))
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(['raw camera', 'sent up (MQTT)'], [report['raw_camera_mb'],
                                               report['bytes_up_mb']])
    ax.set_yscale('log')
    ax.set_ylabel('MB')
    ax.set_title(f'edge filtering: {report["reduction"]:.0f}x less data up')
    figs.append(png(fig))
    fig, ax = plt.subplots(figsize=(6, 3))
    if depth:
        ax.plot([t for t, _ in depth], [d for _, d in depth])
    ax.axvspan(*outage, color='red', alpha=0.15)
    ax.set_xlabel('s')
    ax.set_ylabel('messages queued')
    ax.set_title('durable queue depth')
    figs.append(png(fig))
    rows = ''.join(f'<tr><td>{k}</td><td>{v}</td></tr>' for k, v in report.items())
    images = ''.join(f'<img src="data:image/png;base64,{f}">' for f in figs)
    out.write_text(f'<!doctype html><meta charset="utf-8"><title>cobot_hybrid demo</title>'
                   f'<h1>cobot_hybrid demo</h1><table border=1 cellpadding=4>{rows}</table>'
                   f'{images}')


def main() -> int:
    """Run the loop, print the report, write the HTML page; exit 1 if anything was lost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--source', default='scene',
                        help='scene (built from sample photos) | samples | video | folder')
    parser.add_argument('--seconds', type=float, default=45.0)
    parser.add_argument('--outage', type=float, default=10.0)
    parser.add_argument('--out', default=str(ROOT / 'demo_out'))
    parser.add_argument('--domain', type=int, default=78, help='ROS_DOMAIN_ID of the demo')
    parser.add_argument('--max-stale-share', type=float, default=0.05,
                        help='fail when the robot was stopped for stale perception longer '
                        'than this share of the run')
    args = parser.parse_args()
    settings = choose_settings(safety_limit_s())
    print(f'demo settings: {settings["why"]}')
    configure_ros_environment(domain_id=args.domain, log_prefix='cobot_hybrid_demo_')
    work = Path(tempfile.mkdtemp(prefix='cobot_hybrid_demo_'))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    broker, port = start_mosquitto(work, persistence_dir=work, autosave_interval_s=1)
    proxy = FaultProxy(target=port)
    private, public = make_keys(work)
    cloud = Cloud(port)
    examples = ROOT / 'config' / 'examples'
    orders = work / 'orders.json'
    orders.write_text(json.dumps(DEMO_ORDER))
    rate_hz = settings['rate_hz']
    source = build_scene(work / 'scene', rate_hz) if args.source == 'scene' else args.source
    # The safety monitor's inputs and decisions go into a bag, recorded from before the
    # monitor starts, that `cobot-hybrid replay` plays back into the monitor's core offline.
    # The monitor reads its settings from a file, so the replay can read the same one.
    bag = out / 'safety_bag'
    shutil.rmtree(bag, ignore_errors=True)
    safety_params = out / 'safety_params.yaml'
    safety_params.write_text(yaml.safe_dump({'safety_monitor_node': {'ros__parameters': {
        'publish_camera_tf': True, 'max_perception_age_s': settings['limit_s']}}}))
    recorder = start([sys.executable, '-m', 'cobot_hybrid_cli', 'record', str(bag),
                      '--topics', *[f'{topic}:{kind}' for topic, kind in
                                    monitor_topics('/').items()]],
                     work / 'recorder.log', BACKGROUND_NICE)
    procs = {
        'recorder': recorder,
        'planner': start(ros_node('cobot_hybrid_planner.nodes.planner_node',
                                  f'site_file:={examples / "site.yaml"}',
                                  f'private_key_file:={private}',
                                  f'orders_file:={orders}',
                                  f'broker_port:={port}', f'data_dir:={work / "cloud"}',
                                  'plan_time_limit_s:=0.5'), work / 'planner.log',
                         BACKGROUND_NICE),
        'bridge': start(ros_node('cobot_hybrid_bridge.nodes.bridge_node', f'robot_id:={ROBOT}',
                                 f'broker_port:={proxy.port}', f'data_dir:={work / "edge"}',
                                 f'cloud_public_keys:=[planner={public}]',
                                 'state_period_s:=2.0', 'reconnect_max_s:=2.0'),
                         work / 'bridge.log', BACKGROUND_NICE),
        'safety': start([*ros_node('cobot_hybrid_perception.nodes.safety_monitor_node'),
                         '--params-file', str(safety_params)], work / 'safety.log'),
        'frames': start(ros_node('cobot_hybrid_ros.nodes.static_transform_node',
                                 'parents:=[map]', 'children:=[base_link]'),
                        work / 'frames.log', BACKGROUND_NICE),
        'executor': start(ros_node('cobot_hybrid_bridge.nodes.mission_executor_node',
                                   'stall_timeout_s:=30.0'), work / 'executor.log',
                          BACKGROUND_NICE),
        'skill': start(ros_node('cobot_hybrid_bridge.nodes.skill_server_node'),
                       work / 'skill.log', BACKGROUND_NICE),
        # The cloud's offload side: two worker replicas split the stop snapshots (the
        # shared subscription), sign advisories with the planner's key; the history
        # recorder keeps the robot's uplink for the fleet report written at the end.
        **{name: start([sys.executable, '-m', 'cobot_hybrid_cli', 'worker', 'run',
                        '--broker-port', str(port), '--data-dir', str(work / 'workers'),
                        '--worker-id', name, '--group', 'demo', '--status-period-s', '2',
                        '--advisory-key', str(private), '--option', 'snapshot.threads=1'],
                       work / f'{name}.log', BACKGROUND_NICE)
           for name in ('worker-a', 'worker-b')},
        'history': start([sys.executable, '-m', 'cobot_hybrid_cli', 'history', 'record',
                          '--port', str(port), '--data-dir', str(work / 'history')],
                         work / 'history.log', BACKGROUND_NICE),
        'detector': start(ros_node('cobot_hybrid_perception.nodes.detector_node',
                                   'backend:=ort-cpu', f'imgsz:={settings["imgsz"]}',
                                   'threads:=1'),
                          work / 'detector.log'),
    }
    robot = RobotSide()
    robot.spin_for(3.0)
    procs['camera'] = start(ros_node('cobot_hybrid_perception.nodes.image_source_node',
                                     f'source:={source}', f'rate_hz:={rate_hz}'),
                            work / 'camera.log')
    queue_file = work / 'edge' / ROBOT / 'outbox.db'
    depth: list[tuple[float, int]] = []
    cut_at = args.seconds / 3
    outage = (cut_at, cut_at + args.outage)
    lost_link = False
    monitor_at_end: dict[str, str] = {}
    budgets_at_end: dict[str, tuple[int, str]] = {}
    # `cobot-hybrid profile` on the running demo, after the outage (it adds a process):
    # measured topics, processes and the link through the proxy, then the decision matrix.
    profile_at = outage[1] + 2.0
    profile_s = max(1.0, min(5.0, args.seconds - profile_at - 1.0))
    profiler: subprocess.Popen[bytes] | None = None
    start_time = time.monotonic()
    robot.t0 = start_time  # one time axis for the plots and the outage window
    try:
        while (now := time.monotonic() - start_time) < args.seconds:
            if not lost_link and now >= outage[0]:
                proxy.cut('reset')
                lost_link = True
            if lost_link and proxy.mode != 'forward' and now >= outage[1]:
                proxy.restore()
            if profiler is None and now >= profile_at:
                profiler = start([sys.executable, '-m', 'cobot_hybrid_cli', 'profile',
                                  '--seconds', f'{profile_s:.1f}', '--broker',
                                  f'127.0.0.1:{proxy.port}', '--out', str(out / 'profile')],
                                 work / 'profile.log')
            robot.spin_for(0.25)
            stats = queue_stats(queue_file)
            if stats:
                depth.append((time.monotonic() - start_time, stats['queued']))
            link = 'DOWN' if proxy.mode != 'forward' else 'up  '
            print(f'\r t={now:5.1f}s link {link} frames {robot.frames:4d} people '
                  f'{robot.people:4d} stops {robot.stops:3d} queued '
                  f'{stats["queued"] if stats else 0:5d} up {len(cloud.seqs):5d} missions '
                  f'{len(robot.missions)} tasks done '
                  f'{sum(1 for e in robot.progress if e[2] == "done")}', end='', flush=True)
        print()
        # The run ends here: the monitor's counters now, before the camera stops (after it,
        # perception goes stale by design while the backlog drains).
        robot.spin_for(1.0)
        monitor_at_end = dict(robot.monitor_values)
        budgets_at_end = dict(robot.budgets)
        procs['camera'].send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:  # let the backlog drain
            robot.spin_for(0.5)
            stats = queue_stats(queue_file)
            if stats and stats['queued'] == 0:
                break
        robot.spin_for(2.0)
        sent = cloud.by_topic.get('events/stop_snapshot', 0)
        deadline = time.monotonic() + 90.0   # the workers' second look at every snapshot
        while time.monotonic() < deadline and len(worker_results(work)) < sent:
            robot.spin_for(0.5)
        robot.spin_for(1.5)                   # the advisories reach the robot
        if profiler is not None:
            profiler.wait(timeout=60)
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
        for name in ('camera', 'detector', 'safety', 'executor', 'skill', 'bridge', 'planner',
                     'frames', 'recorder'):
            proc = procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for name in ('worker-a', 'worker-b', 'history'):
            if procs[name].poll() is None:
                procs[name].send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        time.sleep(0.5)
        cloud.close()
        proxy.close()
        broker.terminate()
        broker.wait(timeout=10)
    replay = replay_bag(bag, safety_params, work / 'replay.json')
    offload = offload_report(work, out, cloud.by_topic.get('events/stop_snapshot', 0), robot)
    stats = queue_stats(queue_file) or {}
    committed = set(range(1, stats.get('next_seq', 1)))
    missions, tasks = ledger(work / 'cloud' / 'ledger.db')
    report = {
        'frames': robot.frames, 'detection messages': robot.detections,
        'people detected': robot.people, 'protective stops': robot.stops,
        'link outage': f'{args.outage:.0f} s at t={cut_at:.0f} s',
        'committed': stats.get('committed'), 'delivered': stats.get('delivered'),
        'queued at end': stats.get('queued'), 'dropped': stats.get('dropped'),
        'lost': len(committed - cloud.seqs), 'duplicates': cloud.duplicates,
        'raw_camera_mb': round(robot.raw_bytes / 2**20, 2),
        'bytes_up_mb': round(cloud.bytes_up / 2**20, 3),
        'reduction': robot.raw_bytes / max(1, cloud.bytes_up),
        'max queue depth': max((d for _, d in depth), default=0),
        'missions issued': sum(m['version'] for m in missions.values()),
        'missions acknowledged': sum(1 for m in missions.values() if m['acked'] == 'accepted'),
        'missions on the robot ROS topic': len(robot.missions),
        'task progress reports (robot)': len(robot.progress),
        'tasks done (planner ledger)': f'{sum(s == "done" for s in tasks.values())} of '
                                       f'{len(tasks)}',
        'task status (planner ledger)': json.dumps(tasks),
        'messages up by topic': json.dumps(cloud.by_topic),
        'frames published': json.dumps({f: sorted(t) for f, t in robot.watcher.frames.items()}),
        'TF tree': tf_verdict(robot.watcher),
        'safety replay (bag)': replay,
        **offload,
        'rviz': f'rviz2 -d {RVIZ_CONFIG.relative_to(ROOT)} (fixed frame {rviz_fixed_frame()})',
    }
    matrix = out / 'profile' / 'decision_matrix.md'
    report['decision matrix (cobot-hybrid profile)'] = (
        f'{out / "profile"} ({profile_s:.0f} s at t={profile_at:.0f} s)' if matrix.is_file()
        else f'not written: see {work / "profile.log"}')
    run_s = args.seconds
    robot.monitor_values = monitor_at_end or robot.monitor_values
    robot.budgets = budgets_at_end or robot.budgets
    report.update(stop_report(robot, run_s, args.max_stale_share))
    stale_share = report.pop('stale share')
    report['demo settings'] = settings['why']
    write_html(out / 'report.html', report, robot, depth, outage)
    robot.close()
    print('demo report')
    for key, value in report.items():
        print(f'  {key:<34} {value if not isinstance(value, float) else f"{value:.1f}"}')
    print(f'  {"HTML report":<34} {out / "report.html"}  (logs: {work})')
    if matrix.is_file():
        print('\n' + matrix.read_text())
    stale_ok = stale_share <= args.max_stale_share
    if not stale_ok:
        print(f'demo: the robot was stopped for stale perception '
              f'{100 * stale_share:.1f} % of the run (more than '
              f'--max-stale-share {100 * args.max_stale_share:.1f} %): the perception budget '
              'does not fit this machine; see the budget lines above')
    if any(level >= 2 for level, _ in robot.budgets.values()):
        print('demo: WARNING: a perception budget ended at ERROR (above): the last seconds '
              'of the run did not fit the age limit on this machine')
    analysed = report['snapshots analysed in the cloud']
    ok = (report['lost'] == 0 and robot.frames > 0 and report['missions acknowledged'] >= 1
          and report['TF tree'].startswith('complete') and stale_ok
          and replay.startswith('same decisions') and analysed.startswith('all '))
    if not analysed.startswith('all '):
        print(f'demo: not every stop snapshot was analysed by the workers: {analysed} (logs: '
              f'{work}/worker-*.log)')
    print('demo:', 'OK' if ok else 'FAILED')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
