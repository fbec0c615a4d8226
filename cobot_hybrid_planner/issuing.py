"""Missions out: plan the open tasks, sign one mission per robot whose tasks changed, send it.

:meth:`MissionIssuer.replan` keeps the previous assignment unless moving saves enough (see
:func:`planning.plan`); a robot's new mission holds only its tasks not started yet, and gets a
new version (``epoch * EPOCH_STRIDE + n`` under a fleet lease, so robots follow the newest
owner). Each mission is Ed25519-signed for its robot and sent QoS 1 with an MQTT 5 message
expiry equal to its validity; one not acknowledged within ``resend_after_s`` is sent again as
the same command (a robot that had it answers "replayed", which counts as acknowledged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cobot_hybrid_planner.fleet_state import FleetStore
from cobot_hybrid_planner.ledger import Ledger
from cobot_hybrid_planner.orders import PlanTask
from cobot_hybrid_planner.planning import FleetRobot, plan
from cobot_hybrid_planner.site import Site
from cobot_hybrid_protocol.mission import Mission, Pose, Task, mission_to_json
from cobot_hybrid_protocol.signing import sign_command
from cobot_hybrid_protocol.topics import command_topic
from cobot_hybrid_protocol.transport import Transport

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ['EPOCH_STRIDE', 'MissionIssuer']

_LOG = logging.getLogger(__name__)
EPOCH_STRIDE = 1_000_000          # mission version = lease epoch * EPOCH_STRIDE + n


@dataclass
class MissionIssuer:
    """Plans, signs and sends missions for the robots of one site."""

    ledger: Ledger
    fleet: FleetStore
    site: Site
    private_key: Ed25519PrivateKey
    key_id: str
    transport: Transport
    sent: int = 0

    def robots(self, online: frozenset[str], now: float) -> list[FleetRobot]:
        """Online robots where they are (or will be) and when they are free."""
        robots = []
        for robot_id in sorted(online):
            station, free = self.site.robots[robot_id].start, 0.0
            last = self.ledger.last_task(robot_id)
            if last is not None:
                body, status, started = last
                station = body['station']
                if status == 'in_progress' and started is not None:
                    free = max(0.0, started + body['duration_s'] - now)
            robots.append(FleetRobot(robot_id, self.site.robots[robot_id].capabilities,
                                     station, free))
        return robots

    def _pending(self, robot_id: str, sent: list[str], mission_id: str,
                 version: int) -> list[str]:
        """Tasks of its last mission a robot has still to start, as the robot sees it."""
        failed = {t for t, s in self.fleet.reports(robot_id, mission_id, version).items()
                  if s == 'failed'}
        mine = self.ledger.tasks_of(robot_id)
        return [t for t in sent if t not in mine and t not in failed]

    def replan(self, online: frozenset[str], now: float, time_limit_s: float,
               validity_s: float) -> None:
        """Plan the open tasks on the online robots; send what changed."""
        tasks, closed = self.ledger.open_tasks(now)
        pending = {r: self._pending(r, order, mission_id, version)
                   for r, order, mission_id, version in self.ledger.sent_missions()}
        result = plan(tasks, self.robots(online, now), self.site, time_limit_s=time_limit_s,
                      done=closed, previous={r: [t for t in order if t not in closed]
                                             for r, order in pending.items()})
        by_id = {t.task_id: t for t in tasks}
        for robot_id, order in result.orders.items():
            if pending.get(robot_id, []) == order:
                continue  # what the robot will do anyway: no new version
            self.issue(robot_id, order, by_id, now, validity_s)

    def issue(self, robot_id: str, order: list[str], tasks: dict[str, PlanTask], now: float,
              validity_s: float) -> Mission:
        """Sign and send a new version of the robot's mission; record it in the ledger."""
        base = self.ledger.epoch * EPOCH_STRIDE   # a newer owner's versions are always higher
        version = max(self.ledger.last_version(robot_id), base) + 1
        mission_id = f'{robot_id}-mission'
        mission = Mission(
            command_id=f'{mission_id}-v{version}-{int(now * 1000)}', robot_id=robot_id,
            mission_id=mission_id, version=version, issued_at=now,
            valid_until=now + validity_s, frame_id=self.site.frame_id,
            tasks=tuple(self._task(tasks[t], now) for t in order))
        envelope = sign_command(self.private_key, self.key_id, mission_to_json(mission),
                                robot_id)
        self.ledger.store_mission(robot_id, mission_id, version, envelope, order,
                                  mission.valid_until, now)
        self._send(robot_id, envelope, mission.valid_until - now)
        _LOG.info('mission %s v%d to %s: %d tasks', mission_id, version, robot_id, len(order))
        return mission

    def _task(self, task: PlanTask, now: float) -> Task:
        station = self.site.stations[task.station]
        deadline = None if task.deadline_s is None else now + task.deadline_s
        return Task(task.task_id, task.type, task.station, Pose(station.x, station.y, 0.0,
                                                                station.yaw),
                    task.duration_s, deadline)

    def resend(self, online: frozenset[str], now: float, resend_after_s: float) -> None:
        """Send again the missions of online robots not acknowledged in time."""
        for robot_id, envelope, valid_until, sent_at in self.ledger.unacknowledged():
            if now - sent_at >= resend_after_s and valid_until > now and robot_id in online:
                self.ledger.mark_sent(robot_id, now)
                self._send(robot_id, envelope, valid_until - now)

    def _send(self, robot_id: str, envelope: bytes, expiry_s: float) -> None:
        self.transport.publish(command_topic(robot_id, 'mission'), envelope, qos=1,
                               expiry_s=max(1, int(expiry_s)))
        self.sent += 1
