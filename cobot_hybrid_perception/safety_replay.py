"""Replay a recorded run of the safety monitor offline and check every decision it made.

Pure Python, no ROS, no DDS: the bag is read with :mod:`cobot_hybrid_ros.bag` (rosbags), the
inputs go through the node's own conversions (:mod:`~cobot_hybrid_perception.safety_inputs`)
into a fresh :class:`SafetyPipeline` built from the run's params files, and the pipeline is
evaluated at the ``header.stamp`` of each recorded ``safety_status``: the exact ``now`` the
monitor decided at.

Which inputs the monitor had before a decision is taken from the stamps, not from when the
recorder heard them (another process, other arrival times):

* ``detections`` up to and including the decision's ``perception_stamp`` (the frame it was
  made on), each with the ``keypoints`` of its stamp;
* every other input (``camera_info``, ``depth``, ``robot_speed``, ``joint_states``, the
  detector's ``diagnostics``) with a stamp at or before the decision's ``now``;
* all of them in stamp order (at one stamp: camera_info, depth, keypoints, speed, joints,
  diagnostics, then detections, the order the detector and the drivers publish in).

That is exact when each input reached the monitor before any decision stamped after it, and
the depth image of a frame was the newest one when its detections came. It cannot be exact for
an input that carries no stamp (``robot_speed_type: scalar``, an unstamped twist, joint state
or detector diagnostic: the monitor ages it by an arrival time no bag holds), so those are
refused rather than guessed. Decisions forced from outside the pipeline (cause ``fault``: an
input that raised, deactivation, shutdown) are applied as recorded; the count says how many.

A monitor's state is known from a fault stop on (it forgets its hold, scale and recovery
there), so comparison starts at the first recorded fault stop: the monitor's very first
decision when the recorder started first, else later; the decisions before it are counted as
skipped, not compared. Live parameter changes during the run are not in the bag.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cobot_hybrid_perception import safety_inputs
from cobot_hybrid_perception.errors import PerceptionError
from cobot_hybrid_perception.safety_pipeline import SafetyConfig, SafetyPipeline
from cobot_hybrid_ros.bag import BagError, BagMessage, bag_topics, make_typestore, read_messages
from cobot_hybrid_ros.errors import ImageCodecError

__all__ = ['COMPARED', 'FAULT_CAUSES', 'ReplayError', 'ReplayResult', 'ReplaySettings',
           'load_params', 'monitor_topics', 'replay']

NODE = 'safety_monitor_node'
#: Recorded causes after which the monitor's state is known (a fault resets it).
FAULT_CAUSES = frozenset({'no_perception', 'stale_perception', 'detector_unhealthy', 'clock',
                          'malformed_input', 'robot_pose', 'fault'})
#: Compared exactly / within :data:`TOLERANCE`.
EXACT = ('state', 'cause', 'speed_scale')
CLOSE = ('closest_distance_m', 'required_separation_m', 'allowed_speed_mps', 'perception_age_s')
COMPARED = EXACT + CLOSE
TOLERANCE = 1e-9   # relative and absolute: float noise only
_MAX_PARAMS_BYTES = 1024 * 1024
_RANK = {'camera_info': 0, 'depth': 1, 'keypoints': 2, 'robot_speed': 3, 'joint_states': 4,
         'diagnostics': 5, 'detections': 6}
_TYPES = {'detections': 'vision_msgs/msg/Detection2DArray',
          'keypoints': 'vision_msgs/msg/Detection2DArray',
          'camera_info': 'sensor_msgs/msg/CameraInfo', 'depth': 'sensor_msgs/msg/Image',
          'robot_speed': 'geometry_msgs/msg/TwistStamped',
          'joint_states': 'sensor_msgs/msg/JointState',
          'diagnostics': 'diagnostic_msgs/msg/DiagnosticArray',
          'safety_status': 'cobot_hybrid_msgs/msg/SafetyStatus'}
_SCALAR_SPEED = 'std_msgs/msg/Float64'


class ReplayError(PerceptionError):
    """A bag or params file cannot be replayed (the message says what and what to do)."""


@dataclass(frozen=True)
class ReplaySettings:
    """What the replay takes from the run's params files."""

    safety: SafetyConfig
    robot_speed_type: str = 'twist'
    detector_status_prefix: str = 'detector_node'


def _node_sections(doc: Any, path: Path, namespace: str) -> list[dict[str, Any]]:
    if not isinstance(doc, dict):
        raise ReplayError(f'{path}: not a ROS params file (a mapping of node names)')
    names = {NODE, f'/{NODE}', f'/**/{NODE}', '/**', f'{namespace.rstrip("/")}/{NODE}'}
    found = []
    for key, body in doc.items():
        if key in names:
            params = body.get('ros__parameters') if isinstance(body, dict) else None
            if not isinstance(params, dict):
                raise ReplayError(f'{path}: {key} has no ros__parameters mapping')
            found.append(params)
    return found


def load_params(paths: Sequence[Path], namespace: str = '/') -> ReplaySettings:
    """Read the monitor's settings from its params files, later files overriding earlier ones.

    The keys of ``safety_monitor_node`` (any namespace: ``/**/``) are read as the node reads
    them; keys the pipeline does not use (frames, rviz, autostart) are ignored here, as the
    node itself refused unknown ones when it ran.
    """
    if not paths:
        raise ReplayError('no --params: give the params file(s) the monitor ran with (e.g. '
                          'config/safety.yaml), in the order it was given them')
    values: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > _MAX_PARAMS_BYTES:
                raise ReplayError(f'{path}: {size} bytes; a params file is under '
                                  f'{_MAX_PARAMS_BYTES}')
            doc = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ReplayError(f'{path}: cannot read it ({exc.strerror})') from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ReplayError(f'{path}: not YAML ({str(exc)[:200]})') from None
        sections = _node_sections(doc, path, namespace)
        if not sections:
            raise ReplayError(f'{path}: no {NODE} section (keys: '
                              f'{", ".join(map(str, list(doc)[:5]))})')
        for section in sections:
            values.update(section)
    known = {f.name for f in fields(SafetyConfig)}
    try:
        safety = SafetyConfig(**{k: v for k, v in values.items() if k in known})
    except (TypeError, ValueError, PerceptionError) as exc:
        raise ReplayError(f'params: {exc}') from None
    speed_type = str(values.get('robot_speed_type', 'twist'))
    prefix = str(values.get('detector_status_prefix', 'detector_node'))
    return ReplaySettings(safety, speed_type, prefix)


def _resolve(namespace: str, name: str) -> str:
    return f'{namespace.rstrip("/")}/{name}' if namespace.strip('/') else f'/{name}'


def monitor_topics(namespace: str = '/', robot_speed_type: str = 'twist',
                   robot_geometry: str = 'tcp_point') -> dict[str, str]:
    """Topic -> ``type:qos`` of everything a replay needs (``cobot-hybrid record --topics``).

    The inputs best effort (it matches every publisher), ``safety_status`` latched (reliable,
    with the monitor's history of 500: its first decisions reach a recorder that joins late).
    """
    topics = {_resolve(namespace, k): f'{v}:sensor' for k, v in _TYPES.items()
              if k != 'joint_states' or robot_geometry == 'arm'}
    topics[_resolve(namespace, 'safety_status')] = f'{_TYPES["safety_status"]}:latched'
    if robot_speed_type == 'scalar':
        topics[_resolve(namespace, 'robot_speed')] = f'{_SCALAR_SPEED}:sensor'
    return topics


@dataclass(frozen=True)
class Mismatch:
    """One decision the replay did not make as recorded."""

    index: int
    now_s: float
    differences: dict[str, tuple[Any, Any]]   # field -> (recorded, replayed)
    recorded_reason: str
    replayed_reason: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (infinities as strings)."""
        return {'index': self.index, 'now_s': self.now_s,
                'differences': {k: [_plain(a), _plain(b)]
                                for k, (a, b) in self.differences.items()},
                'recorded_reason': self.recorded_reason, 'replayed_reason': self.replayed_reason}


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class ReplayResult:
    """What the replay found."""

    decisions: int = 0
    compared: int = 0
    matched: int = 0
    skipped_before_sync: int = 0
    forced: int = 0
    input_errors: int = 0
    inputs: dict[str, int] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)   # recorded, of those compared
    causes: dict[str, int] = field(default_factory=dict)   # recorded, of those compared
    mismatches: list[Mismatch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every compared decision matched (and at least one was compared)."""
        return self.compared > 0 and self.matched == self.compared

    def to_dict(self, max_mismatches: int = 20) -> dict[str, Any]:
        """Return a JSON-ready dict with the first ``max_mismatches`` mismatches."""
        return {'ok': self.ok, 'decisions': self.decisions, 'compared': self.compared,
                'matched': self.matched, 'mismatched': len(self.mismatches),
                'skipped_before_sync': self.skipped_before_sync, 'forced': self.forced,
                'input_errors': self.input_errors, 'inputs': self.inputs,
                'states': self.states, 'causes': self.causes, 'notes': self.notes,
                'mismatches': [m.to_dict() for m in self.mismatches[:max_mismatches]]}


@dataclass(frozen=True)
class _Input:
    stamp: tuple[int, int]
    index: int
    kind: str
    msg: Any


def _same(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
        return a == b
    return math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE)


class _Feeder:
    """The inputs of each kind in stamp order, fed up to each decision's bounds."""

    def __init__(self, inputs: list[_Input], pipeline: SafetyPipeline,
                 settings: ReplaySettings, result: ReplayResult) -> None:
        self.queues: dict[str, list[_Input]] = {kind: [] for kind in _RANK}
        for item in inputs:
            self.queues[item.kind].append(item)
        for queue in self.queues.values():
            queue.sort(key=lambda i: (i.stamp, i.index))
        self.heads = dict.fromkeys(_RANK, 0)
        self.pipeline, self.settings, self.result = pipeline, settings, result
        self.keypoints: OrderedDict[tuple[int, int], safety_inputs.KeypointTable] = \
            OrderedDict()
        self.detections_stamp = (0, 0)
        self.detection_stamps = {i.stamp for i in self.queues['detections']}
        self.keypoints_used: tuple[tuple[int, int], bool] = ((0, 0), True)

    def feed_until(self, now: tuple[int, int], perception: tuple[int, int],
                   keypoints_used: bool = True) -> None:
        """Feed what the monitor had taken before a decision at ``now`` on ``perception``.

        ``keypoints_used`` (the decision's own word) says whether the keypoints of the frame
        it decided on had come before that frame did: they travel on their own topic.
        """
        self.keypoints_used = (perception, keypoints_used)
        while True:
            best: _Input | None = None
            for kind, queue in self.queues.items():
                head = self.heads[kind]
                if head >= len(queue):
                    continue
                item = queue[head]
                bound = perception if kind == 'detections' else now
                if item.stamp > bound:
                    continue
                if best is None or (item.stamp, _RANK[kind], item.index) < \
                        (best.stamp, _RANK[best.kind], best.index):
                    best = item
            if best is None:
                return
            self.heads[best.kind] += 1
            self._feed(best, now)

    def _feed(self, item: _Input, now: tuple[int, int]) -> None:
        now_s = float(now[0]) + float(now[1]) * 1e-9
        kind, msg, pipeline = item.kind, item.msg, self.pipeline
        self.result.inputs[kind] = self.result.inputs.get(kind, 0) + 1
        try:
            if kind == 'keypoints':
                self.keypoints[item.stamp] = safety_inputs.keypoint_table(msg)
                while len(self.keypoints) > 8:
                    self.keypoints.popitem(last=False)
            elif kind == 'detections':
                frame, used = self.keypoints_used
                keypoints = self.keypoints.get(item.stamp, {}) \
                    if used or item.stamp != frame else {}
                safety_inputs.feed_detections(pipeline, msg, keypoints)
                self.detections_stamp = item.stamp
            elif kind == 'camera_info':
                pipeline.on_camera_info(list(msg.k), msg.height)
            elif kind == 'depth':
                safety_inputs.feed_depth(pipeline, msg)
            elif kind == 'robot_speed':
                safety_inputs.feed_twist(pipeline, msg, now_s)
            elif kind == 'joint_states':
                safety_inputs.feed_joint_state(pipeline, msg, now_s)
            elif kind == 'diagnostics':
                healthy = safety_inputs.detector_health(msg.status,
                                                        self.settings.detector_status_prefix)
                if healthy is not None:
                    pipeline.on_detector_health(healthy)
        except (PerceptionError, ImageCodecError, ValueError, TypeError) as exc:
            # The monitor met the same error and published a forced stop (cause fault).
            self.result.input_errors += 1
            if len(self.result.notes) < 20:
                self.result.notes.append(f'{kind} stamped {item.stamp[0]}.{item.stamp[1]:09d} '
                                         f'raised {type(exc).__name__}: {str(exc)[:120]}')


def _stamp_key(msg: Any) -> tuple[int, int]:
    return safety_inputs.stamp_key(msg.header.stamp)


def _classify(messages: list[BagMessage], names: dict[str, str],
              settings: ReplaySettings) -> tuple[list[_Input], list[Any]]:
    inputs: list[_Input] = []
    decisions: list[Any] = []
    unstamped: dict[str, int] = {}
    for index, item in enumerate(messages):
        kind = names[item.topic]
        if kind == 'safety_status':
            decisions.append(item.msg)
            continue
        if kind == 'robot_speed' and item.msgtype == _SCALAR_SPEED:
            unstamped[item.topic] = unstamped.get(item.topic, 0) + 1
            continue
        if kind == 'diagnostics' and not any(
                s.name.startswith(settings.detector_status_prefix) for s in item.msg.status):
            continue   # not the detector's (the monitor's own, another node's)
        stamped = safety_inputs.has_stamp(item.msg.header.stamp)
        if not stamped and kind in ('robot_speed', 'joint_states', 'diagnostics'):
            unstamped[item.topic] = unstamped.get(item.topic, 0) + 1
            continue
        inputs.append(_Input(_stamp_key(item.msg), index, kind, item.msg))
    if unstamped:
        raise ReplayError('cannot replay exactly: ' + ', '.join(
            f'{n} messages on {t}' for t, n in unstamped.items()) + ' carry no stamp (or are '
            'std_msgs/Float64), so the monitor aged them by their arrival time, which no bag '
            'holds; publish TwistStamped / JointState / diagnostics with header stamps')
    return inputs, decisions


def _sync_point(decisions: list[Any], inputs: list[_Input]) -> int | None:
    """Return the first fault stop after every decision made on frames the bag lacks."""
    stamps = [i.stamp for i in inputs if i.kind == 'detections']
    first = min(stamps) if stamps else None
    start = 0
    for index, decision in enumerate(decisions):
        perception = safety_inputs.stamp_key(decision.perception_stamp)
        if perception != (0, 0) and (first is None or perception < first):
            start = index + 1   # made on a frame the recorder never got
    return next((i for i in range(start, len(decisions))
                 if decisions[i].cause in FAULT_CAUSES), None)


def replay(bag: Path, settings: ReplaySettings, namespace: str = '/') -> ReplayResult:
    """Replay ``bag`` through a fresh pipeline and compare each recorded decision."""
    if settings.robot_speed_type == 'scalar':
        raise ReplayError('robot_speed_type scalar: std_msgs/Float64 has no stamp, the '
                          'monitor ages it by its arrival time, which no bag holds; exact '
                          'replay needs robot_speed as TwistStamped (robot_speed_type twist)')
    try:
        present = bag_topics(Path(bag))
        store = make_typestore()
        names = {_resolve(namespace, kind): kind for kind in _TYPES}
        for required in ('safety_status', 'detections'):
            topic = _resolve(namespace, required)
            if topic not in present:
                raise ReplayError(f'{bag}: no {topic} in the bag (it has '
                                  f'{", ".join(sorted(present)) or "no topics"}); record '
                                  'every topic of `cobot-hybrid replay --print-topics`')
        wanted = {t: [_TYPES[k]] + ([_SCALAR_SPEED] if k == 'robot_speed' else [])
                  for t, k in names.items()}
        messages = list(read_messages(Path(bag), store, wanted))
    except BagError as exc:
        raise ReplayError(str(exc)) from None
    result = ReplayResult()
    for topic, kind in names.items():
        if topic not in present and kind not in ('joint_states', 'depth', 'keypoints') and (
                kind != 'diagnostics'):
            result.notes.append(f'{topic} is not in the bag')
    inputs, decisions = _classify(messages, names, settings)
    result.decisions = len(decisions)
    if not decisions:
        raise ReplayError(f'{bag}: {_resolve(namespace, "safety_status")} holds no decisions')
    sync = _sync_point(decisions, inputs)
    if sync is None:
        raise ReplayError(f'{bag}: none of its {len(decisions)} decisions is a fault stop '
                          "made on recorded detections, so the monitor's state is never "
                          'known; start the recorder before the monitor and the detector '
                          '(or record until a stop)')
    result.skipped_before_sync = sync
    if sync:
        result.notes.append(f'the first {sync} decisions come before the first fault stop on '
                            'recorded detections (the recorder joined late): not compared')
    pipeline = SafetyPipeline(settings.safety)
    feeder = _Feeder(inputs, pipeline, settings, result)
    for index, recorded in enumerate(decisions[sync:], start=sync):
        now = _stamp_key(recorded)
        perception = safety_inputs.stamp_key(recorded.perception_stamp)
        feeder.feed_until(now, perception, bool(recorded.keypoints_used))
        now_s = safety_inputs.stamp_s(recorded.header.stamp)
        if recorded.cause == 'fault':
            report = pipeline.fault(recorded.reason)
            result.forced += 1
        else:
            report = pipeline.evaluate(now_s)
        _compare(index, now_s, recorded, report, feeder, perception, result)
    return result


def _compare(index: int, now_s: float, recorded: Any, report: Any, feeder: _Feeder,
             perception: tuple[int, int], result: ReplayResult) -> None:
    d = report.decision
    replayed = {'state': d.state.value, 'cause': d.cause, 'speed_scale': float(d.speed_scale),
                'closest_distance_m': float(d.closest_distance_m),
                'required_separation_m': float(d.required_separation_m),
                'allowed_speed_mps': float(d.allowed_speed_mps),
                'perception_age_s': float(report.perception_age_s)}
    differences = {}
    for name in COMPARED:
        mine, theirs = replayed[name], getattr(recorded, name)
        if name in EXACT and mine != theirs or name in CLOSE and not _same(mine, theirs):
            differences[name] = (theirs, mine)
    if recorded.cause != 'fault' and perception != (0, 0) and \
            feeder.detections_stamp != perception:
        missing = perception not in feeder.detection_stamps
        differences['perception_stamp'] = (
            f'{perception[0]}.{perception[1]:09d}',
            'not in the bag' if missing else
            f'{feeder.detections_stamp[0]}.{feeder.detections_stamp[1]:09d}')
    result.compared += 1
    result.states[recorded.state] = result.states.get(recorded.state, 0) + 1
    result.causes[recorded.cause] = result.causes.get(recorded.cause, 0) + 1
    if differences:
        result.mismatches.append(Mismatch(index, now_s, differences, recorded.reason,
                                          d.reason))
    else:
        result.matched += 1
