"""The edge bridge without ROS: routes -> filters -> durable queue -> MQTT, and commands back.

:class:`EdgeBridge` is what ``bridge_node`` drives. The node converts each ROS message to a
dict (or CDR bytes) and calls :meth:`EdgeBridge.offer`; a timer calls :meth:`EdgeBridge.tick`
(group commit, aggregates, TTL, CRDT state snapshots, link statistics) and
:meth:`EdgeBridge.take_commands` (verified missions for ROS, rejections counted). Everything
that goes up is committed to the queue before it is published.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobot_hybrid_bridge.bridge_config import BridgeConfig
from cobot_hybrid_bridge.command_security import CommandRejected, CommandVerifier
from cobot_hybrid_bridge.durable_queue import DiskFullError, DurableQueue
from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.filters import (
    EventTrigger,
    Filter,
    RateLimiter,
    Snapshot,
    make_filter,
)
from cobot_hybrid_bridge.link import CommandHandler, Link, LinkFactory
from cobot_hybrid_bridge.model_fetch import FetchConfig, ModelFetcher
from cobot_hybrid_bridge.mqtt_link import LinkConfig, MqttLink
from cobot_hybrid_bridge.routes import Route
from cobot_hybrid_protocol.advisory import Advisory
from cobot_hybrid_protocol.clock import SYSTEM_CLOCK, Clock
from cobot_hybrid_protocol.crdt import HLC, HlcTimestamp, PNCounter, TelemetryState
from cobot_hybrid_protocol.envelope import CONTRACT_TYPES, MAX_SEQ, build_envelope
from cobot_hybrid_protocol.errors import KeyFileError, PayloadError, SchemaError
from cobot_hybrid_protocol.limits import (
    COMMAND_LIMITS,
    FILE_LIMITS,
    TELEMETRY_LIMITS,
    check_tree,
    parse_json,
)
from cobot_hybrid_protocol.mission import (
    MAX_REASON,
    Mission,
    MissionAck,
    TaskProgress,
    ack_to_json,
    progress_to_json,
    validate_progress,
)
from cobot_hybrid_protocol.model_update import (
    LocalUpdate,
    ModelCommand,
    ModelStatus,
    blob_request_to_json,
    metrics_to_json,
    status_to_json,
    validate_metrics,
    validate_model_command,
    validate_status,
)
from cobot_hybrid_protocol.settings import project
from cobot_hybrid_protocol.signing import load_public_keys, open_signed
from cobot_hybrid_protocol.snapshot import HEADER_LIMITS as SNAPSHOT_HEADER_LIMITS
from cobot_hybrid_protocol.snapshot import SNAPSHOT_TYPE, build_snapshot
from cobot_hybrid_protocol.topics import (
    BLOB_REQUEST,
    BRIDGE_TELEMETRY,
    MISSION_ACK,
    MODEL_METRICS,
    MODEL_STATUS,
    STATE,
    TASK_PROGRESS,
    TopicError,
    parse_topic,
    robot_topic,
)

__all__ = ['EdgeBridge', 'RouteState']

_LOG = logging.getLogger(__name__)
_ACK_PRIORITY = 8
_STATE_PRIORITY = 2
_METRICS_PRIORITY = 2
#: Chunks held between the network thread and the next tick (a flood drops the oldest).
_MAX_CHUNKS_HELD = 256


@dataclass
class RouteState:
    """A route with its live filter, rate limiter and counters."""

    route: Route
    filter: Filter
    limiter: RateLimiter
    trigger: EventTrigger | None = None      # on the trigger route of a snapshot route
    keep_latest: bool = False                # a snapshot route sends its newest message
    latest: tuple[float, dict[str, Any]] | None = None   # (wall stamp, message)
    fired: dict[str, Any] | None = None      # a snapshot route: what triggered it last
    offered: int = 0
    sent: int = 0


def _mqtt_link(cfg: LinkConfig, queue: DurableQueue, lock: threading.Lock,
               on_command: CommandHandler) -> Link:
    return MqttLink(cfg, queue, lock, on_command=on_command)


class EdgeBridge:
    """Queue, link, routes, commands and telemetry state of one robot."""

    cfg: BridgeConfig
    routes: list[Route]
    clock: Clock
    link_factory: LinkFactory | None   # None: the paho MqttLink
    queue: DurableQueue
    link: Link
    lock: threading.Lock
    states: list[RouteState]
    missions: dict[str, Mission]
    rejected: Counter[str]
    disk_full_errors: int
    internal_errors: int
    clock_steps: int
    _inbox: deque[tuple[str, bytes, bool]]
    _verifier: CommandVerifier | None
    _state: TelemetryState
    _clock: HLC
    _next_commit: float
    _next_state: float
    _next_expire: float

    def __init__(self, cfg: BridgeConfig, routes: list[Route], clock: Clock = SYSTEM_CLOCK,
                 link_factory: LinkFactory | None = None) -> None:
        self.cfg = cfg
        self.routes = routes
        self.clock = clock
        self.link_factory = link_factory
        self.lock = threading.Lock()
        self.missions = {}
        self.rejected = Counter()
        self.uplink_refused: Counter[str] = Counter()   # routed messages beyond the limits
        self.disk_full_errors = 0
        self.internal_errors = 0
        self.clock_steps = 0
        self._inbox = deque()
        self._chunks: deque[tuple[str, int, bytes]] = deque(maxlen=_MAX_CHUNKS_HELD)
        self.chunks_overflowed = 0
        self.model_updates: deque[LocalUpdate] = deque(maxlen=16)
        #: Every ack sent up, for the node to show on ROS (``mission_ack``); the newest kept.
        self.acks: deque[MissionAck] = deque(maxlen=64)
        #: Accepted cloud advisories, for the node to log and show (``advisories``).
        self.advisories: deque[Advisory] = deque(maxlen=64)
        self._fetcher: ModelFetcher | None = None
        self._verifier = None
        self._state = TelemetryState()
        self._next_commit = 0.0
        self._next_state = 0.0
        self._next_expire = 0.0
        opaque = [r.ros_topic for r in self.routes if r.encoding in ('jpeg', 'cdr')]
        if self.cfg.delivery == 'cloud' and self.cfg.protocol == 'mqtt311' and opaque:
            raise BridgeError(f'routes {opaque} send JPEG/CDR payloads, which carry their seq '
                              'only in MQTT 5 user properties: with protocol mqtt311 the cloud '
                              'could never acknowledge them (delivery: cloud); use mqtt5, '
                              'encoding json, or delivery: broker')
        data = self.cfg.data_path
        data.mkdir(parents=True, exist_ok=True)
        self.queue = DurableQueue(data / 'outbox.db', self.cfg.queue_config(), self.clock)
        make_link = self.link_factory or _mqtt_link
        self.link = make_link(self.cfg.link_config(), self.queue, self.lock, self._on_command)
        self.states = [RouteState(r, make_filter(r.filter_spec), RateLimiter(r.rate_limit_hz))
                       for r in self.routes]
        for state in self.states:
            spec = dict(state.route.filter_spec or {})
            if spec.get('kind') == 'snapshot':
                for other in self.states:
                    if other.route.ros_topic == spec['trigger_topic'] and other.trigger is None:
                        other.trigger = EventTrigger(str(spec['field']), spec['equals'])
                    if other.route.ros_topic in spec.get('context', ()):
                        other.keep_latest = True
                known = {other.route.ros_topic for other in self.states}
                missing = sorted(set(spec.get('context', ())) - known)
                if missing:
                    raise BridgeError(f'snapshot route {state.route.ros_topic}: context '
                                      f'{missing} are not the ROS topics of any route')
        if self.cfg.cloud_public_keys:
            try:
                keys = load_public_keys(self.cfg.key_paths())
            except KeyFileError as exc:
                raise BridgeError(str(exc)) from None
            self._verifier = CommandVerifier(
                self.cfg.robot_id, keys,
                data / 'replay.db', max_bytes=self.cfg.max_command_bytes,
                max_clock_skew_s=self.cfg.max_clock_skew_s, clock=self.clock,
                advisory_only=frozenset(self.cfg.advisory_key_ids))
            self._fetcher = ModelFetcher(data / 'models', project(self.cfg, FetchConfig),
                                         self._reopen_model, self.clock.wall,
                                         self.clock.monotonic)
        self._clock = HLC(self.cfg.robot_id)
        self._state_path = data / 'telemetry_state.json'
        if self._state_path.is_file():
            try:
                self._state = TelemetryState.from_json(
                    parse_json(self._state_path.read_bytes(), FILE_LIMITS, str(self._state_path)))
            except (ValueError, OSError) as exc:   # PayloadError and CrdtError are ValueErrors
                _LOG.error('telemetry state %s unreadable (%s): starting empty',
                           self._state_path, exc)
        # The clock continues after the newest stamp it wrote before (a restart, or a wall
        # clock stepped back since): else the robot's own new values lose to its old ones.
        for stamp, _ in self._state.values.entries.values():
            if stamp.replica == self.cfg.robot_id and (stamp.wall_ms, stamp.logical) > (
                    self._clock.wall_ms, self._clock.logical):
                self._clock.wall_ms, self._clock.logical = stamp.wall_ms, stamp.logical

    def start(self) -> None:
        """Connect (in the background; an unreachable broker is retried, never fatal)."""
        self.link.start()

    def stop(self) -> None:
        """Commit what is held, say offline, close files."""
        with self.lock:
            self._commit()
        self.link.stop()
        self._save_state()
        self.queue.close()
        if self._verifier is not None:
            self._verifier.close()

    # --- uplink ------------------------------------------------------------------------------

    def _enqueue(self, mqtt_topic: str, payload: bytes | Callable[[int], bytes], qos: int,
                 priority: int, retain: bool) -> int:
        with self.lock:
            return self.queue.put(robot_topic(self.cfg.robot_id, mqtt_topic), payload, qos,
                                  priority, retain)

    def offer(self, index: int, data: dict[str, Any] | None, raw: bytes | None,
              now_s: float | None = None) -> list[int]:
        """Take a ROS message of route ``index`` (a dict, or CDR bytes for ``cdr`` routes).

        Returns the route indices of snapshot routes whose trigger fired on this message.
        """
        now = self.clock.wall() if now_s is None else now_s   # stamps
        mono = self.clock.monotonic()                        # rates, windows
        state = self.states[index]
        state.offered += 1
        fired: list[int] = []
        if state.keep_latest and data is not None:
            state.latest = (now, data)
        if state.trigger is not None and data is not None and state.trigger.fires(data):
            fired = [i for i, s in enumerate(self.states) if isinstance(s.filter, Snapshot)
                     and dict(s.route.filter_spec or {}).get('trigger_topic')
                     == state.route.ros_topic]
            for i in fired:
                self.states[i].fired = {'topic': state.route.ros_topic,
                                        'field': state.trigger.field_path,
                                        'value': state.trigger.equals, 'stamp': round(now, 6)}
        if state.route.encoding == 'cdr' and raw is not None:
            outputs: list[Any] = [raw] if state.limiter.allow(mono) else []
        else:
            outputs = [o for o in state.filter.offer(data or {}, mono)
                       if state.limiter.allow(mono)]
        for output in outputs:
            self._send(state, output, now)
        return fired

    def send_snapshot(self, index: int, jpeg: bytes, width: int, height: int,
                      frame_id: str = '', image_stamp: float | None = None,
                      now_s: float | None = None) -> None:
        """Queue a snapshot: the JPEG of the route's latest image, its trigger, its context.

        The node encoded the JPEG; the context is the newest message of each topic the
        route's ``context`` names. A context the header cannot carry (too large, non-finite,
        too deep) is left out and counted by reason
        (``uplink_refused['snapshot_context_<reason>']``): the image still goes.
        """
        state = self.states[index]
        route = state.route
        now = self.clock.wall() if now_s is None else now_s
        context = {}
        for topic in dict(route.filter_spec or {}).get('context', ()):
            for other in self.states:
                if other.route.ros_topic == topic and other.latest is not None:
                    context[topic] = {'stamp': round(other.latest[0], 6),
                                      'data': other.latest[1]}
                    break
        data = {'image': {'width': int(width), 'height': int(height),
                          'frame_id': str(frame_id)[:256],
                          'stamp': round(now if image_stamp is None else image_stamp, 6),
                          'bytes': len(jpeg)},
                'trigger': state.fired or {'topic': '', 'field': '', 'value': None,
                                           'stamp': round(now, 6)},
                'context': context}
        try:
            check_tree(data, SNAPSHOT_HEADER_LIMITS, f'{route.ros_topic} snapshot header')
            probe = build_envelope(self.cfg.robot_id, MAX_SEQ, now, route.ros_topic,
                                   SNAPSHOT_TYPE, data)
            if len(probe) > SNAPSHOT_HEADER_LIMITS.max_bytes:
                raise PayloadError('too_large', f'{len(probe)} bytes')
        except PayloadError as exc:   # too large, non-finite, too deep: counted by reason
            self.uplink_refused[f'snapshot_context_{exc.reason}'] += 1
            _LOG.warning('%s snapshot sent without its context (%s: %s)', route.ros_topic,
                         exc.reason, exc.detail)
            data['context'] = {}

        def payload(seq: int) -> bytes:
            return build_snapshot(build_envelope(self.cfg.robot_id, seq, now, route.ros_topic,
                                                 SNAPSHOT_TYPE, data), jpeg)
        self._enqueue(route.mqtt_topic, payload, route.qos, route.priority, route.retain)
        state.sent += 1

    def _send(self, state: RouteState, output: Any, now: float) -> None:
        route = state.route
        if isinstance(output, bytes):
            payload: bytes | Callable[[int], bytes] = output
        else:
            try:   # what the cloud would refuse for good is refused here, counted
                check_tree(output, TELEMETRY_LIMITS, f'{route.ros_topic} as JSON')
            except PayloadError as exc:
                self.uplink_refused[exc.reason] += 1
                _LOG.warning('%s not sent: %s (the cloud accepts at most the uplink limits of '
                             'cobot_hybrid_protocol.limits)', route.ros_topic, exc.detail)
                return

            def payload(seq: int, data: Any = output) -> bytes:
                return build_envelope(self.cfg.robot_id, seq, now, route.ros_topic,
                                     route.type_name, data)
        self._enqueue(route.mqtt_topic, payload, route.qos, route.priority, route.retain)
        state.sent += 1

    def record(self, counter: str, amount: int = 1) -> None:
        """Count an event in the CRDT telemetry state."""
        self._state.counters.setdefault(counter, PNCounter()).add(self.cfg.robot_id, amount)

    def set_value(self, key: str, value: Any) -> None:
        """Record a last-known value in the CRDT telemetry state."""
        self._state.values.set(key, value, self._stamp())

    def set_alarm(self, name: str, active: bool) -> None:
        """Raise or clear an alarm in the CRDT telemetry state (only a change is stamped)."""
        current = self._state.alarms.get(name)
        if current is None and not active or current == active:
            return
        self._state.alarms.set(name, bool(active), self._stamp())

    def _stamp(self) -> HlcTimestamp:
        """Return the next HLC stamp of this robot's state, from the wall clock [ms]."""
        return self._clock.now(int(self.clock.wall() * 1000))

    # --- periodic ----------------------------------------------------------------------------

    def tick(self, now_s: float | None = None) -> None:
        """Run aggregates, group commit, TTL and state snapshots; call every 10-20 ms.

        Schedules run on the monotonic clock (a wall clock stepped back by NTP never stalls
        commits); ``now_s`` (wall) only stamps what is sent. A wall-clock step is re-based in
        the queue before anything is expired, so a backlog keeps its ages.
        """
        now = self.clock.wall() if now_s is None else now_s
        mono = self.clock.monotonic()
        for state in self.states:
            for summary in state.filter.tick(mono):
                self._send(state, summary, now)
        if mono >= self._next_state:
            self._next_state = mono + self.cfg.state_period_s
            self._send_state(now)
        if mono >= self._next_commit:
            self._next_commit = mono + self.cfg.commit_interval_s
            with self.lock:
                self._commit()
                step = self.queue.check_clock()
                if step:
                    self.clock_steps += 1
                    _LOG.warning('the wall clock jumped by %+.1f s: queued messages keep their '
                                 'ages', step)
                if mono >= self._next_expire:
                    self._next_expire = mono + 60.0
                    self.queue.expire(now)

    def _commit(self) -> None:
        try:
            if self.queue.commit():
                self.link.wake()
        except DiskFullError as exc:
            self.disk_full_errors += 1
            _LOG.error('%s', exc)

    def _send_state(self, now: float) -> None:
        snapshot = self._state.to_json()
        self._enqueue(STATE, lambda seq: build_envelope(
            self.cfg.robot_id, seq, now, 'state', CONTRACT_TYPES['state'], snapshot),
            1, _STATE_PRIORITY, True)
        self._save_state()

    def _save_state(self) -> None:
        tmp = self._state_path.with_suffix('.tmp')
        tmp.write_text(json.dumps(self._state.to_json()))
        tmp.replace(self._state_path)

    # --- downlink ----------------------------------------------------------------------------

    def _on_command(self, topic: str, payload: bytes, retained: bool = False) -> None:
        # paho's thread: only queue it
        if '/blob/' in topic:
            try:
                blob = parse_topic(topic).blob
            except TopicError:
                blob = None
            if blob is None or retained:
                self.rejected['bad_chunk_topic' if blob is None else 'retained_chunk'] += 1
                return
            if len(self._chunks) == self._chunks.maxlen:
                self.chunks_overflowed += 1
            self._chunks.append((blob[0], blob[1], payload))
            return
        self._inbox.append((topic, payload, retained))

    def take_commands(self, now_s: float | None = None) -> list[Mission]:
        """Verify what came down; return the missions to act on, newest version only.

        Each command is handled once, on its own: whatever one does (a bug included) is a
        counted rejection with an ack, and the next command is still handled.
        """
        accepted = []
        while self._inbox:
            topic, payload, retained = self._inbox.popleft()
            kind = topic.rsplit('/', 1)[-1][:64]
            try:
                mission = self._verify(kind, payload, retained, now_s)
            except Exception as exc:  # noqa: BLE001 - the per-command boundary
                self.internal_errors += 1
                _LOG.exception('command on %s could not be handled', topic[:200])
                self._reject(kind, 'internal_error', f'{type(exc).__name__} while checking '
                             'the command (a bug: see the robot log)')
                continue
            if mission is not None:
                accepted.append(mission)
        return accepted

    def _verify(self, kind: str, payload: bytes, retained: bool, now_s: float | None
                ) -> Mission | None:
        if kind == 'model' and not retained and self._verifier is not None:
            self._take_model_command(payload, now_s)
            return None
        if kind == 'advisory' and not retained and self._verifier is not None:
            self._take_advisory(payload, now_s)
            return None
        if kind not in ('mission', 'model', 'advisory'):
            self._reject(kind, 'unsupported', f'no handler for command kind {kind!r}')
            return None
        if retained:   # a command is for its moment; a retained one re-arrives on every start
            self._reject(kind, 'retained', 'commands must not be published retained (clear '
                         'the retained message on the broker)')
            return None
        if self._verifier is None:
            self._reject(kind, 'no_key', 'no cloud_public_keys configured: refusing every '
                         'command')
            return None
        try:
            mission = self._verifier.verify(payload, now_s)
        except CommandRejected as exc:
            self._reject(kind, exc.reason, exc.detail, exc.mission)
            return None
        self.missions[mission.mission_id] = mission
        self.record('missions_accepted')
        self._ack(mission.mission_id, mission.version, 'accepted', '')
        return mission

    def _take_advisory(self, payload: bytes, now_s: float | None) -> None:
        assert self._verifier is not None
        try:
            advisory = self._verifier.verify_advisory(payload, now_s)
        except CommandRejected as exc:
            self._reject('advisory', exc.reason, exc.detail)
            return
        self.record('advisories')
        self.advisories.append(advisory)
        _LOG.warning('cloud advisory %s on %s seq %d: %s (logged only: never a safety '
                     'input)', advisory.verdict, advisory.upload_kind, advisory.upload_seq,
                     advisory.summary)

    def _reject(self, kind: str, reason: str, detail: str,
                mission: Mission | ModelCommand | None = None) -> None:
        self.rejected[reason] += 1
        self.record('commands_rejected')
        _LOG.warning('command %s rejected: %s', kind, detail)
        if kind == 'advisory':   # nothing to answer: the count is in the bridge's stats
            return
        if kind == 'model' or isinstance(mission, ModelCommand):
            command = mission if isinstance(mission, ModelCommand) else None
            self._send_model_status(ModelStatus(
                'failed', command.rollout_id if command else '',
                command.revision if command else 0, command.model if command else None,
                None, f'rejected: {reason}: {detail}'[:MAX_REASON], {}, self.clock.wall()))
            return
        assert not isinstance(mission, ModelCommand)
        self._ack(mission.mission_id if mission else None,
                  mission.version if mission else None, 'rejected', f'{reason}: {detail}')

    def _ack(self, mission_id: str | None, version: int | None, status: str,
             reason: str) -> None:
        now = self.clock.wall()
        ack = MissionAck(status, mission_id, version, reason[:MAX_REASON])
        self.acks.append(ack)
        body = ack_to_json(ack)
        self._enqueue(MISSION_ACK, lambda seq: build_envelope(
            self.cfg.robot_id, seq, now, 'mission_ack', CONTRACT_TYPES['mission_ack'], body),
            1, _ACK_PRIORITY, False)

    # --- model updates (cmd/model, blob chunks, the detector's reports) ---------------------

    def _reopen_model(self, envelope: bytes) -> ModelCommand:
        """Read a command this bridge accepted before (a resumed download): no replay check."""
        assert self._verifier is not None
        payload = open_signed(envelope, self._verifier.keys, self.cfg.robot_id,
                              self.cfg.max_command_bytes)
        return validate_model_command(parse_json(payload, COMMAND_LIMITS, 'the command'))

    def _take_model_command(self, payload: bytes, now_s: float | None) -> None:
        assert self._verifier is not None and self._fetcher is not None
        try:
            command = self._verifier.verify_model(payload, now_s)
        except CommandRejected as exc:
            self._reject('model', exc.reason, exc.detail, exc.mission)
            return
        self.record('model_commands_accepted')
        self._fetcher.start(command, payload)

    def take_model_updates(self) -> list[LocalUpdate]:
        """Write the chunks that came, ask for the next ones; return files ready for ROS."""
        fetcher = self._fetcher
        if fetcher is None:
            self._chunks.clear()
            return []
        while self._chunks:
            fetcher.on_chunk(*self._chunks.popleft())
        step = fetcher.tick(online=self.link.stats.connected)
        now = self.clock.wall()
        for request in step.requests:
            self._send_blob_request(blob_request_to_json(request), now)
        for status in step.statuses:
            self._send_model_status(status)
        if step.ready is not None:
            self.model_updates.append(step.ready)
        ready = list(self.model_updates)
        self.model_updates.clear()
        return ready

    def _send_blob_request(self, body: dict[str, Any], now: float) -> None:
        self._enqueue(BLOB_REQUEST, lambda seq: build_envelope(
            self.cfg.robot_id, seq, now, 'blob_request', CONTRACT_TYPES['blob_request'],
            body), 1, _ACK_PRIORITY, False)

    def _send_model_status(self, status: ModelStatus) -> None:
        body = status_to_json(status)
        self.record(f'model_{status.state}')
        self._enqueue(MODEL_STATUS, lambda seq: build_envelope(
            self.cfg.robot_id, seq, status.stamp or self.clock.wall(), 'model_status',
            CONTRACT_TYPES['model_status'], body), 1, _ACK_PRIORITY, False)

    def report_model_status(self, text: str) -> bool:
        """Send up the detector's model status (JSON v1); a malformed one is counted."""
        try:
            status = validate_status(parse_json(text, COMMAND_LIMITS, 'model status'))
        except (PayloadError, SchemaError) as exc:
            self.rejected['model_status_rejected'] += 1
            _LOG.warning('model status not sent: %s (see cobot_hybrid_protocol.model_update)',
                         exc)
            return False
        self._send_model_status(status)
        return True

    def report_model_metrics(self, text: str) -> bool:
        """Send up the detector's periodic model metrics (JSON v1)."""
        try:
            metrics = validate_metrics(parse_json(text, COMMAND_LIMITS, 'model metrics'))
        except (PayloadError, SchemaError) as exc:
            self.rejected['model_metrics_rejected'] += 1
            _LOG.warning('model metrics not sent: %s', exc)
            return False
        body = metrics_to_json(metrics)
        self._enqueue(MODEL_METRICS, lambda seq: build_envelope(
            self.cfg.robot_id, seq, metrics.stamp, 'model_metrics',
            CONTRACT_TYPES['model_metrics'], body), 1, _METRICS_PRIORITY, False)
        return True

    def report_progress(self, text: str) -> bool:
        """Send up a task progress report given as JSON v1 (the deprecated String topic).

        A malformed report is counted as ``progress_rejected``, logged with its reason and
        not sent; the executor's next report is unaffected.
        """
        try:
            progress = validate_progress(parse_json(text, COMMAND_LIMITS, 'task progress'))
        except (PayloadError, SchemaError) as exc:
            self.refuse_progress(exc)
            return False
        self.send_progress(progress)
        return True

    def refuse_progress(self, exc: Exception) -> None:
        """Count and log a task progress report the contract refuses (it is not sent)."""
        self.rejected['progress_rejected'] += 1
        _LOG.warning('task progress not sent: %s (see cobot_hybrid_protocol.mission, task '
                     'progress v1)', exc)

    def send_progress(self, progress: TaskProgress) -> None:
        """Send up a validated task progress report, next to the mission acks."""
        body = progress_to_json(progress)
        self.record(f'tasks_{progress.status}')
        self._enqueue(TASK_PROGRESS, lambda seq: build_envelope(
            self.cfg.robot_id, seq, progress.stamp, 'task_progress',
            CONTRACT_TYPES['task_progress'], body), 1, _ACK_PRIORITY, False)

    # --- observability -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Return connection, backlog, drops, drain rate, RTT and command counters."""
        with self.lock:
            queue = self.queue.stats()
        link = self.link.stats
        return {
            'connected': link.connected, 'connects': link.connects,
            'disconnects': link.disconnects, 'rtt_ms': round(link.rtt_ms, 2),
            'drain_rate_hz': link.drain_rate_hz, 'inflight': link.inflight,
            'committed': queue.committed, 'delivered': queue.delivered,
            'backlog_messages': queue.queued, 'backlog_bytes': queue.queued_bytes,
            'oldest_age_s': round(queue.oldest_age_s, 3), 'dropped': dict(queue.dropped),
            'dropped_uncommitted': queue.dropped_uncommitted, 'balanced': queue.balanced,
            'no_subscribers_retries': link.no_subscribers, 'refused': link.refused,
            'disk_full_errors': self.disk_full_errors,
            'commands_rejected': dict(self.rejected),
            'uplink_refused': dict(self.uplink_refused),
            'internal_errors': self.internal_errors, 'clock_steps': self.clock_steps,
            'model_fetch': dict(self._fetcher.counters) if self._fetcher else {},
            'chunks_overflowed': self.chunks_overflowed,
            'missions': {k: m.version for k, m in self.missions.items()},
            'last_error': link.last_error}

    def send_stats(self, now_s: float | None = None) -> dict[str, Any]:
        """Queue the link statistics as telemetry too; return them."""
        stats = self.stats()
        now = self.clock.wall() if now_s is None else now_s
        self._enqueue(BRIDGE_TELEMETRY, lambda seq: build_envelope(
            self.cfg.robot_id, seq, now, 'bridge', CONTRACT_TYPES['bridge'], stats),
            1, 1, False)
        return stats


def routes_path(configured: str, share: Path) -> Path:
    """Return the routes file: the configured one, else the package's default."""
    return Path(configured).expanduser() if configured else share / 'bridge_routes.yaml'
