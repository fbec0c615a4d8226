"""The cloud planner over MQTT: orders in, telemetry in, signed missions out. No ROS.

:class:`PlannerService` keeps the fleet in :class:`FleetStore`, the tasks and issued missions
in a :class:`~cobot_hybrid_planner.ledger.Ledger` beside it (a restart resumes), and talks to
the broker through a transport (:mod:`cobot_hybrid_protocol.transport`: a paho session in
production, an in-memory one in tests). On :meth:`step` it:

* takes work orders (:mod:`intake` rules: parsed within limits, never retained, validated
  task by task, rejections remembered with their reason);
* stores telemetry, liveness, mission acks and task progress (acks and liveness first), and
  applies progress and acks to the ledger (:mod:`progress`); the tasks in progress of a robot
  that goes offline are put back to plan;
* replans when tasks arrived, a robot came or went, a task ended or failed, or a mission was
  rejected, and sends each robot whose task list changed a new signed mission (:mod:`issuing`);
  re-sends those not acknowledged within ``resend_after_s``;
* acknowledges to each robot what the fleet store has committed
  (``cobot/v1/<robot_id>/delivered``), so robots with ``delivery: cloud`` delete their copy
  only once it is stored here, not on the broker's PUBACK.

With a ``fleet_id`` the service is one of several replicas (:mod:`replica`): it plans and
signs only while it holds the fleet's lease, through the fleet's own MQTT session, and hands
its ledger over through a retained snapshot (:mod:`handover`).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cobot_hybrid_planner import handover
from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.fleet_state import FleetStore
from cobot_hybrid_planner.issuing import EPOCH_STRIDE, MissionIssuer
from cobot_hybrid_planner.ledger import TASK_STATUSES, Ledger
from cobot_hybrid_planner.mqtt_session import PahoSession
from cobot_hybrid_planner.orders import OrderError, validate_orders
from cobot_hybrid_planner.progress import ProgressTracker
from cobot_hybrid_planner.replica import FleetReplica, fleet_orders_topic
from cobot_hybrid_planner.rollout import RolloutController
from cobot_hybrid_planner.site import Site
from cobot_hybrid_protocol import signing
from cobot_hybrid_protocol.broker_auth import BrokerAuth
from cobot_hybrid_protocol.clock import SYSTEM_CLOCK, Clock, WallStepDetector
from cobot_hybrid_protocol.errors import BrokerAuthError, KeyFileError, PayloadError, TopicError
from cobot_hybrid_protocol.limits import TELEMETRY_LIMITS, parse_json, parse_yaml
from cobot_hybrid_protocol.model_update import (
    ModelRef,
    validate_blob_request,
    validate_metrics,
    validate_status,
)
from cobot_hybrid_protocol.paths import planner_data_dir
from cobot_hybrid_protocol.settings import check_settings, same_as, setting, specs
from cobot_hybrid_protocol.topics import (
    BLOB_REQUEST,
    MISSION_ACK,
    MODEL_METRICS,
    MODEL_STATUS,
    ORDERS_TOPIC,
    STATE,
    STATUS,
    TASK_PROGRESS,
    check_fleet_id,
    fleet_filter,
    robot_filter,
)
from cobot_hybrid_protocol.transport import Message, Transport

__all__ = ['EPOCH_STRIDE', 'TASK_STATUSES', 'PlannerConfig', 'PlannerService',
           'load_orders_file', 'load_private_key']

_LOG = logging.getLogger(__name__)
_PLAN_RETRY_S = 10.0
_URGENT = tuple(f'/{kind}' for kind in (STATUS, MISSION_ACK, TASK_PROGRESS, STATE,
                                        MODEL_STATUS, BLOB_REQUEST))
_MAX_REJECTIONS = 1000
_Item = tuple[str, bytes, dict[str, str], bool]


@dataclass(frozen=True)
class PlannerConfig:
    """Everything the planner needs: where the broker is, what it signs with, how it plans.

    The one source of ``planner_node``'s parameters, ``planner.yaml`` and the ``serve``
    command line. The ``live`` settings are applied by :meth:`PlannerService.reconfigure`.
    """

    site_file: str = setting('', 'site YAML: stations, robots, travel (see '
                             'config/examples/site.yaml)')
    private_key_file: str = setting('', 'PEM Ed25519 key the missions are signed with')
    key_id: str = setting('planner', 'the id robots know the public key by')
    orders_file: str = setting('', 'work order loaded at start ("" = none)')
    broker_host: str = setting('127.0.0.1', 'MQTT broker host')
    broker_port: int = setting(1883, 'MQTT broker port', low=1, high=65535)
    client_id: str = setting('planner', 'MQTT client id of this replica (one per replica)')
    tls_ca: str = same_as(BrokerAuth, 'tls_ca')
    tls_cert: str = same_as(BrokerAuth, 'tls_cert')
    tls_key: str = same_as(BrokerAuth, 'tls_key')
    username: str = same_as(BrokerAuth, 'username')
    password_file: str = same_as(BrokerAuth, 'password_file')
    password_env: str = same_as(BrokerAuth, 'password_env')
    data_dir: str = setting('', 'fleet store and mission ledger folder ("" = '
                            '~/.local/state/cobot_hybrid/planner)')
    plan_time_limit_s: float = setting(2.0, 'planning time limit', unit='s', low=0.05,
                                       high=600.0, live=True)
    mission_validity_s: float = setting(3600.0, 'missions expire after (MQTT 5 message expiry '
                                        'too)', unit='s', low=1.0, high=86400.0, live=True)
    resend_after_s: float = setting(10.0, 're-send unacknowledged missions after', unit='s',
                                    low=0.1, high=3600.0, live=True)
    offline_after_s: float = setting(10.0, 'a robot silent this long is offline', unit='s',
                                     low=0.1, high=3600.0, live=True)
    step_period_s: float = setting(0.1, 'how often the planner takes what arrived', unit='s',
                                   low=0.01, high=10.0)
    max_task_failures: int = setting(3, 'a task failing this often is given up (and its '
                                     'successors)', low=1, high=1000, live=True)
    fleet_id: str = setting('', '"" = the only planner; set it on every replica of a fleet')
    lease_s: float = setting(6.0, 'replicas: an owner silent this long is replaced', unit='s',
                             low=1.0, high=600.0)
    model_registry: str = setting('', 'MLflow registry the rollouts promote in (sqlite:///... '
                                  'or http://127.0.0.1:5000; "" = the embedded one in '
                                  'data_dir, as cobot-hybrid rollout start uses)')
    delivery_ack_period_s: float = setting(0.5, 'robots (delivery: cloud) hear what was stored '
                                           'at most this often', unit='s', low=0.01,
                                           high=60.0)

    def __post_init__(self) -> None:
        if isinstance(self.data_dir, Path):   # from code and tests: a folder as a Path
            object.__setattr__(self, 'data_dir', str(self.data_dir))
        check_settings(self, PlannerError)
        try:
            self.auth.check()
        except BrokerAuthError as exc:
            raise PlannerError(str(exc)) from None
        if self.fleet_id:
            try:
                check_fleet_id(self.fleet_id)
            except TopicError as exc:
                raise PlannerError(str(exc)) from None

    @property
    def auth(self) -> BrokerAuth:
        """The TLS files and credentials of every session of this replica."""
        return BrokerAuth.of(self)

    @property
    def data_path(self) -> Path:
        """The folder of the fleet store and the ledger."""
        return planner_data_dir(self.data_dir)

    def require_files(self) -> None:
        """Check the site and key files exist (not at declaration: defaults have none)."""
        for name in ('site_file', 'private_key_file'):
            path = getattr(self, name)
            if not path or not Path(path).expanduser().is_file():
                raise PlannerError(f'{name} {path!r} does not exist; set it (see '
                                   'config/examples/site.yaml, and an Ed25519 private key)')


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read the planner's PEM Ed25519 private key (raises PlannerError naming the file)."""
    try:
        return signing.load_private_key(path)
    except KeyFileError as exc:
        raise PlannerError(str(exc)) from None


class PlannerService:
    """Fleet state, ledger, planning and mission dispatch."""

    cfg: PlannerConfig
    site: Site
    private_key: Ed25519PrivateKey
    clock: Clock
    transport: Transport            # given, or a paho session to cfg's broker
    rejected_tasks: dict[str, str]   # the latest, bounded
    errors: Counter[str]   # caught at a message boundary
    clock_steps: int
    _inbox: deque[_Item]
    _dirty: bool
    _online: frozenset[str]

    def __init__(self, cfg: PlannerConfig, site: Site, private_key: Ed25519PrivateKey,
                 clock: Clock = SYSTEM_CLOCK, transport: Transport | None = None) -> None:
        self.cfg = cfg
        self.site = site
        self.private_key = private_key
        self.clock = clock
        self.rejected_tasks = {}
        self.errors = Counter()
        self.clock_steps = 0
        self._inbox = deque()
        self._dirty = True
        self._online = frozenset()
        self.cfg.data_path.mkdir(parents=True, exist_ok=True)
        self.fleet = FleetStore(self.cfg.data_path / 'fleet.db', self.cfg.offline_after_s,
                                robots_allowed=frozenset(self.site.robots))
        self.ledger = Ledger(self.cfg.data_path / 'ledger.db')
        self.progress = ProgressTracker(self.ledger)
        self._acks_at = 0.0
        self._held_acks: list[tuple[int, list[tuple[str, bytes]]]] = []
        self._snapshot_pending: tuple[int, Any] | None = None   # changes, its publish info
        self._snapshot_covers = -1     # ledger changes in the newest snapshot the broker has
        self._snapshot_changes = -1
        self._snapshot_at = 0.0
        self._ingest_after = 0.0
        self._plan_after = 0.0     # after a failed plan: not before this time
        self._wall_steps = WallStepDetector(self.clock)
        self.replica: FleetReplica | None = None
        fleet = self.cfg.fleet_id
        if fleet:
            self.replica = FleetReplica(fleet, self.cfg.client_id, self.cfg.broker_host,
                                        self.cfg.broker_port, self.cfg.lease_s,
                                        auth=self.cfg.auth)
            # The fleet's session: its robots and its forwarded orders, queued by the broker
            # while ownership changes hands.
            self._subscriptions = [(robot_filter(r), 1) for r in sorted(self.site.robots)] \
                + [(fleet_orders_topic(fleet), 1)]
            self._orders_topics: tuple[str, ...] = (ORDERS_TOPIC, fleet_orders_topic(fleet))
            client_id = f'planner-{fleet}'
        else:
            self._subscriptions, client_id = [(fleet_filter(), 1)], self.cfg.client_id
            self._orders_topics = (ORDERS_TOPIC,)
        self.transport = transport if transport is not None else PahoSession(
            client_id, self.cfg.broker_host, self.cfg.broker_port, auth=self.cfg.auth)
        self.issuer = MissionIssuer(self.ledger, self.fleet, self.site, self.private_key,
                                    self.cfg.key_id, self.transport)
        self.rollouts = RolloutController(self.cfg.data_path / 'rollouts', self._sign_command,
                                          self._send_command, on_promote=self._promote,
                                          on_fail=self._unmark)
        self.model_events: Counter[str] = Counter()

    # --- model rollouts ----------------------------------------------------------------------

    def _sign_command(self, robot_id: str, command: dict[str, Any]) -> bytes:
        return signing.sign_command(self.private_key, self.cfg.key_id, command, robot_id)

    def _send_command(self, topic: str, payload: bytes, expiry_s: float) -> None:
        self.transport.publish(topic, payload, qos=1, expiry_s=max(1, int(expiry_s)))

    def _registry(self) -> Any:
        from cobot_hybrid_planner.model_registry import ModelRegistry, default_registry_uri
        return ModelRegistry(self.cfg.model_registry or default_registry_uri(self.cfg.data_dir))

    def _promote(self, candidate: ModelRef, champion: ModelRef | None) -> None:
        self._registry().promote(candidate.name, candidate.version)

    def _unmark(self, candidate: ModelRef) -> None:
        """Clear the registry's canary mark of a failed or aborted rollout."""
        registry = self._registry()
        if registry.aliases(candidate.name).get('canary') == candidate.version:
            registry.clear_canary(candidate.name)

    def _model_event(self, robot_id: str, kind: str, data: Any, now: float) -> None:
        """Hand a robot's model status, metrics, chunk request or stop to the rollouts."""
        try:
            if kind == MODEL_STATUS:
                self.rollouts.on_status(robot_id, validate_status(data), now)
            elif kind == MODEL_METRICS:
                self.rollouts.on_metrics(robot_id, validate_metrics(data), now)
            elif kind == BLOB_REQUEST:
                self.rollouts.on_blob_request(robot_id, validate_blob_request(data))
            elif isinstance(data, dict) and data.get('data') is True:
                self.rollouts.on_stop(robot_id)
        except ValueError as exc:   # SchemaError: a robot sent what the contract refuses
            self.model_events[f'rejected {kind}'] += 1
            _LOG.warning('%s from %s refused: %s', kind, robot_id, exc)
            return
        self.model_events[kind] += 1

    def reconfigure(self, cfg: PlannerConfig) -> None:
        """Apply new values of the live settings (from the next step on); refuse any other."""
        fixed = sorted(name for name, (_, spec) in specs(PlannerConfig).items()
                       if not spec.live and getattr(cfg, name) != getattr(self.cfg, name))
        if fixed:
            raise PlannerError(f'{", ".join(fixed)} cannot change while the planner runs')
        self.cfg = cfg
        self.fleet.offline_after_s = cfg.offline_after_s
        self._dirty = True   # plan again with the new limits

    # --- what others read --------------------------------------------------------------------

    @property
    def sent(self) -> int:
        """Missions sent (new versions and re-sends)."""
        return self.issuer.sent

    @property
    def progress_ignored(self) -> int:
        """Progress reports of unknown or already closed tasks."""
        return self.progress.ignored

    @property
    def progress_unauthorized(self) -> int:
        """Progress reports from a robot the task was not assigned to."""
        return self.progress.unauthorized

    @property
    def epoch(self) -> int:
        """The lease epoch this replica plans under (0 for a single planner)."""
        return self.ledger.epoch

    @property
    def is_owner(self) -> bool:
        """Whether this planner plans and signs now (always, without replicas)."""
        return self.replica is None or self.replica.lease.is_owner

    def online(self) -> frozenset[str]:
        """Robots of the site that are online now."""
        return self._online

    def task_status(self) -> dict[str, dict[str, Any]]:
        """Every task of the ledger: status, robot, failures, reason."""
        return self.ledger.task_status()

    def task_station(self, task_id: str) -> str:
        """Return the station of a stored task."""
        return self.ledger.task_station(task_id)

    def missions(self) -> dict[str, dict[str, Any]]:
        """Return the ledger: robot -> mission id, version, tasks, acknowledgement."""
        return self.ledger.missions()

    def ledger_snapshot(self) -> bytes:
        """Return the ledger (tasks, missions) as JSON, for the next owner."""
        return handover.snapshot(self.ledger, self.cfg.fleet_id)

    # --- connection --------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (retried in the background); a replica joins the fleet's lease first."""
        if self.replica is not None:
            self.replica.start()  # the fleet session is connected once the lease is ours
        else:
            self._connect_session()

    def _connect_session(self) -> None:
        self.transport.connect(self._subscriptions, self._on_message)

    def stop(self) -> None:
        """Disconnect and close the stores."""
        self.transport.disconnect()
        if self.replica is not None:
            self.replica.stop()
        self.rollouts.close()
        self.fleet.close()
        self.ledger.close()

    def _on_message(self, message: Message) -> None:
        try:
            self.receive(message.topic, message.payload, dict(message.properties),
                         message.retained)
        except Exception:  # noqa: BLE001 - the network thread must go on
            self.errors['receive'] += 1
            _LOG.exception('planner: an MQTT message could not be taken')

    def receive(self, topic: str, payload: bytes, properties: dict[str, str],
                retained: bool = False) -> None:
        """Take one MQTT message (the network thread, or a replay); :meth:`step` handles it."""
        self._inbox.append((topic, payload, properties, retained))

    # --- replicas ----------------------------------------------------------------------------

    def _follow_lease(self) -> None:
        assert self.replica is not None
        became, lost = self.replica.tick(time.monotonic())
        if became:
            epoch = self.replica.lease.epoch
            self._adopt_snapshot()
            self.ledger.set_epoch(epoch)
            _LOG.warning('replica %s owns fleet %s (epoch %d)', self.cfg.client_id,
                         self.cfg.fleet_id, epoch)
            self._online, self._dirty = frozenset(), True
            self._connect_session()
        if lost:
            _LOG.warning('replica %s lost fleet %s', self.cfg.client_id, self.cfg.fleet_id)
            self.transport.disconnect()

    def _adopt_snapshot(self) -> None:
        assert self.replica is not None
        if self.replica.snapshot is None:
            return
        outcome = handover.adopt(self.ledger, self.replica.snapshot, self.cfg.fleet_id)
        if outcome is handover.Adoption.NOT_STORED:
            self.errors['snapshot'] += 1

    def _share_ledger(self) -> None:
        assert self.replica is not None
        changes = self.ledger.changes
        if changes != self._snapshot_changes and time.monotonic() - self._snapshot_at >= 0.5:
            self._snapshot_changes, self._snapshot_at = changes, time.monotonic()
            info = self.replica.publish_snapshot(self.ledger_snapshot())
            self._snapshot_pending = (changes, info)

    # --- orders ------------------------------------------------------------------------------

    def _reject_order(self, task_id: str, reason: str) -> None:
        """Remember why a task (or ``<order>``) was refused; the newest 1,000 are kept."""
        self.rejected_tasks.pop(task_id, None)
        self.rejected_tasks[task_id[:128]] = reason[:500]
        while len(self.rejected_tasks) > _MAX_REJECTIONS:
            del self.rejected_tasks[next(iter(self.rejected_tasks))]

    def add_orders(self, data: Any, now_s: float | None = None) -> list[str]:
        """Validate an order; store its tasks; return the accepted task ids.

        Release times and deadlines count from ``now_s`` (when the order arrived).
        """
        now = self.clock.wall() if now_s is None else now_s
        known, failed = self.ledger.known_tasks()
        try:
            tasks, rejected = validate_orders(data, self.site, known, failed_ids=failed)
        except OrderError as exc:
            _LOG.warning('order rejected: %s', exc)
            self._reject_order('<order>', str(exc))
            return []
        for rejection in rejected:
            _LOG.warning('task %s rejected: %s', rejection.task_id, rejection.reason)
            self._reject_order(rejection.task_id, rejection.reason)
        self.ledger.add_tasks(tasks, now)
        if tasks:
            self._dirty = True
        return [t.task_id for t in tasks]

    def _take_order(self, payload: bytes, retained: bool, now: float) -> None:
        """One work order from MQTT: parsed within limits, never retained, never fatal."""
        if retained:   # an order is for its moment; retained, it would come back every start
            self._reject_order('<order>', 'retained order ignored: publish orders without '
                               'retain (and clear the retained message)')
            return
        try:
            self.add_orders(parse_json(payload, TELEMETRY_LIMITS, 'the order'), now)
        except PayloadError as exc:
            self._reject_order('<order>', str(exc))
        except Exception as exc:  # noqa: BLE001 - the per-message boundary
            self.errors['order'] += 1
            self._reject_order('<order>', f'internal error {type(exc).__name__}')
            _LOG.exception('a work order could not be handled')

    # --- the loop ----------------------------------------------------------------------------

    def step(self, now_s: float | None = None) -> None:
        """Take what arrived, replan if needed, send and re-send missions.

        ``now_s`` (tests, replays) overrides the clock; otherwise a wall-clock step is
        detected first and the stored times re-based (:meth:`rebase`).
        """
        if now_s is None:
            step = self._wall_steps.check()
            if step:
                self.rebase(step)
        now = self.clock.wall() if now_s is None else now_s
        if self.replica is not None:
            self._follow_lease()
            if not self.replica.lease.is_owner:
                return
        self._take_inbox(now)
        if self.clock.monotonic() >= self._acks_at:   # stored: the robots may forget it
            self._acks_at = self.clock.monotonic() + self.cfg.delivery_ack_period_s
            # A replica's effects on the ledger must reach the next owner first: its acks wait
            # for the PUBACK of a snapshot holding them (see _release_acks).
            self._held_acks.append((self.ledger.changes, self.fleet.delivered.take()))
            if self.replica is None:
                self._release_acks(covered=self.ledger.changes)
        online = frozenset(r for r, view in self.fleet.robots(now).items()
                           if view.online and r in self.site.robots)
        if online != self._online:
            self._release_tasks_of(self._online - online)
            self._online, self._dirty = online, True
        if self._dirty and online and now >= self._plan_after:
            self._dirty = False
            try:
                self.issuer.replan(online, now, self.cfg.plan_time_limit_s,
                                   self.cfg.mission_validity_s)
            except Exception:  # noqa: BLE001 - one bad plan must not end the fleet's planner
                self.errors['plan'] += 1
                self._dirty, self._plan_after = True, now + _PLAN_RETRY_S
                _LOG.exception('planning failed; trying again in %.0f s', _PLAN_RETRY_S)
        self.issuer.resend(self._online, now, self.cfg.resend_after_s)
        try:
            self.rollouts.step(now, self._online)
        except Exception:  # noqa: BLE001 - a rollout's bug must not stop the planner
            self.errors['rollout'] += 1
            _LOG.exception('the rollout controller failed a step')
        if self.replica is not None:
            self._share_ledger()
            pending = self._snapshot_pending
            if pending is not None and pending[1].is_published():
                self._snapshot_pending, self._snapshot_covers = None, pending[0]
            self._release_acks(covered=self._snapshot_covers)

    def _take_inbox(self, now: float) -> None:
        urgent: list[_Item] = []
        bulk: list[_Item] = []
        while self._inbox:
            item = self._inbox.popleft()
            if item[0] in self._orders_topics:
                self._take_order(item[1], item[3], now)
                continue
            # Acks and liveness first: under a telemetry flood they must not wait behind it.
            (urgent if item[0].endswith(_URGENT) else bulk).append(item)
        if now < self._ingest_after:
            self._inbox.extendleft(reversed(urgent + bulk))   # the store is failing: later
            return
        try:
            self._ingest(urgent, now)
            self._ingest(bulk, now)
        except sqlite3.Error as exc:   # disk full, I/O error: keep them, try again in 1 s
            self.errors['store'] += 1
            self._ingest_after = now + 1.0
            self._inbox.extendleft(reversed(urgent + bulk))
            _LOG.error('the fleet store cannot commit (%s): %d messages kept, retrying in 1 s',
                       exc, len(urgent) + len(bulk))

    def _ingest(self, batch: list[_Item], now: float) -> None:
        if not batch:
            return
        outcomes = self.fleet.ingest_many(batch, now)  # one transaction for the batch
        for (topic, _, _, _), outcome in zip(batch, outcomes, strict=True):
            try:
                if outcome.ack is not None and outcome.robot_id is not None:
                    self._dirty |= self.progress.on_ack(outcome.robot_id, outcome.ack)
                elif outcome.progress is not None and outcome.robot_id is not None:
                    self._dirty |= self.progress.on_progress(
                        outcome.robot_id, outcome.progress, now, self.cfg.max_task_failures)
                elif outcome.event is not None and outcome.robot_id is not None:
                    self._model_event(outcome.robot_id, *outcome.event, now)
            except Exception:  # noqa: BLE001 - the per-message boundary
                self.errors['ingest'] += 1
                _LOG.exception('planner: %s on %s could not be handled', outcome,
                               topic[:256])

    def _release_tasks_of(self, robots: frozenset[str]) -> None:
        """Put the tasks in progress of robots that went offline back to plan."""
        for robot_id in robots:
            moved = self.ledger.release_tasks_of(robot_id)
            if moved:
                _LOG.warning('%s went offline: %d task(s) in progress put back to plan',
                             robot_id, moved)

    def _release_acks(self, covered: int) -> None:
        """Send the delivery acknowledgements whose ledger effects are ``covered``."""
        while self._held_acks and self._held_acks[0][0] <= covered:
            for topic, payload in self._held_acks.pop(0)[1]:
                self.transport.publish(topic, payload, qos=1)

    def rebase(self, step_s: float) -> None:
        """Shift every stored time of the ledger by a wall-clock step of ``step_s``.

        Orders keep their release times and deadlines, tasks in progress their expected
        ends, missions their re-send times, robots their liveness.
        """
        self.clock_steps += 1
        _LOG.warning('the wall clock jumped by %+.1f s: ledger and liveness times re-based',
                     step_s)
        self.ledger.rebase(step_s)
        self.fleet.rebase(step_s)
        self.rollouts.rebase(step_s)


def load_orders_file(path: Path) -> Any:
    """Read a YAML/JSON work order file within the file limits (raises PlannerError)."""
    try:
        return parse_yaml(Path(path).read_bytes(), what=f'orders file {path}')
    except OSError as exc:
        raise PlannerError(f'orders file {path} cannot be read: {exc.strerror}') from None
    except PayloadError as exc:
        raise PlannerError(exc.detail) from None
