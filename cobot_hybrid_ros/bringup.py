"""Bring a list of lifecycle nodes up in order, all or none. No rclpy here: the steps only.

What ``lifecycle_manager_node`` does at start:

1. wait for every node's lifecycle services (``service_timeout_s`` each);
2. for each node in ``node_names`` order: configure it, then activate it (skipping a step it
   is already past), before the next node starts.

One node after the other, not all configured and then all activated as Nav2's lifecycle
manager does: the safety monitor (first in the list) and a driver adapter are active and
holding the robot stopped while the detector spends minutes building a TensorRT engine.

The first refused or unanswered step stops the bring-up: what this run already did is undone
in reverse (active nodes are deactivated, which stops the robot through the safety monitor,
configured ones cleaned up), the rest is never started, and the :class:`BringupError` names the
node, the step and the reason the node logged. Nothing is left running half-way.

The ROS side is behind :class:`LifecycleClient`, so the sequence is tested without processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cobot_hybrid_protocol.settings import check_settings, setting
from cobot_hybrid_ros.errors import RosHelperError

__all__ = ['ACTIVE', 'FINALIZED', 'INACTIVE', 'STATE_NAMES', 'TRANSITIONS', 'UNCONFIGURED',
           'BringupConfig', 'BringupError', 'LifecycleClient', 'StepResult', 'bring_up']

# The primary states and transitions of lifecycle_msgs (State.PRIMARY_STATE_*, Transition.*).
UNCONFIGURED, INACTIVE, ACTIVE, FINALIZED = 1, 2, 3, 4
STATE_NAMES = {0: 'unknown', UNCONFIGURED: 'unconfigured', INACTIVE: 'inactive',
               ACTIVE: 'active', FINALIZED: 'finalized'}
TRANSITIONS = {'configure': 1, 'cleanup': 2, 'activate': 3, 'deactivate': 4}


class BringupError(RosHelperError):
    """A node could not be brought up; what was started is undone."""


@dataclass(frozen=True)
class BringupConfig:
    """The lifecycle manager's parameters."""

    node_names: tuple[str, ...] = setting(
        ('safety_monitor_node', 'detector_node'), 'lifecycle nodes to bring up, in order '
        "(relative names resolve in this node's namespace)", array_type='string')
    autostart: bool = setting(True, 'bring the nodes up at start')
    service_timeout_s: float = setting(15.0, "wait this long for a node's lifecycle services",
                                       unit='s', low=0.1, high=600.0)
    transition_timeout_s: float = setting(300.0, 'a transition must answer within this (a '
                                          'first TensorRT engine build in configure takes '
                                          'minutes)', unit='s', low=0.1, high=3600.0)
    check_period_s: float = setting(1.0, 'after bring-up, check every node is still active '
                                    'this often (diagnostics)', unit='s', low=0.05, high=60.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'node_names', tuple(str(n) for n in self.node_names))
        check_settings(self, BringupError)
        if not self.node_names or not all(self.node_names):
            raise BringupError('node_names is empty: list the lifecycle nodes to bring up, in '
                               'order (e.g. [safety_monitor_node, detector_node])')
        if len(set(self.node_names)) != len(self.node_names):
            raise BringupError(f'node_names {list(self.node_names)} names a node twice')


@dataclass(frozen=True)
class StepResult:
    """The answer to one transition request: accepted or not, and why not."""

    ok: bool
    reason: str = ''


class LifecycleClient(Protocol):
    """What the sequence needs of ROS: a node's state and its transitions."""

    def wait_ready(self, node: str) -> bool:
        """Return whether the node's lifecycle services appeared in time."""

    def state(self, node: str) -> int | None:
        """Return the node's primary state id, or None when it does not answer."""

    def change(self, node: str, transition: str) -> StepResult:
        """Request ``transition`` (a key of TRANSITIONS) and say whether the node took it."""


@dataclass
class _Done:
    steps: list[tuple[str, str]] = field(default_factory=list)   # (node, transition)


def _undo(client: LifecycleClient, done: _Done) -> list[str]:
    """Reverse what this bring-up did; return what could not be undone."""
    left = []
    for node, transition in reversed(done.steps):
        back = {'activate': 'deactivate', 'configure': 'cleanup'}[transition]
        if not client.change(node, back).ok:
            left.append(f'{node} ({back} refused)')
    return left


def bring_up(client: LifecycleClient, nodes: Sequence[str]) -> list[str]:
    """Configure, then activate each node in turn; return the log of what was done.

    Raises :class:`BringupError` (after undoing this run's steps) on the first failure.
    """
    done = _Done()
    log: list[str] = []

    def fail(message: str) -> BringupError:
        left = _undo(client, done)
        undone = f'; undone: {len(done.steps)} step(s)' if done.steps else ''
        if left:
            undone += f', could not undo {", ".join(left)}'
        return BringupError(message + undone + '; the remaining nodes were not started')

    for node in nodes:
        if not client.wait_ready(node):
            raise fail(f'{node}: its lifecycle services did not appear (is it running, with '
                       'autostart false, under that name and namespace?)')
    for node in nodes:
        for step, wanted_from in (('configure', UNCONFIGURED), ('activate', INACTIVE)):
            state = client.state(node)
            if state is None:
                raise fail(f'{node}: no answer to get_state before {step}')
            if state == FINALIZED:
                raise fail(f'{node} is finalized; restart it')
            if state != wanted_from:
                log.append(f'{node}: already {STATE_NAMES.get(state, state)}, {step} skipped')
                continue
            result = client.change(node, step)
            if not result.ok:
                reason = result.reason or "no reason logged; see the node's own log"
                raise fail(f'{node}: {step} failed: {reason}')
            done.steps.append((node, step))
            log.append(f'{node}: {step}d')
    return log
