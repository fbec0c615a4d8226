"""``lifecycle_manager_node``: bring the suite's lifecycle nodes up in order, all or none.

Parameters (:class:`~cobot_hybrid_ros.bringup.BringupConfig`): ``node_names`` in bring-up
order, ``autostart``, ``service_timeout_s``, ``transition_timeout_s``, ``check_period_s``.

At start it configures, then activates each node in turn
(:func:`~cobot_hybrid_ros.bringup.bring_up`). A refused transition ends the process with
status 2 and one line naming the node, the step and the reason the node logged (read from
``/rosout``), after undoing what it had done: nothing is left half-way up. After bring-up it
checks every ``check_period_s`` that each node is still active and publishes ``diagnostics``
(ERROR naming any node that is not, or does not answer).

Nav2's ``nav2_lifecycle_manager`` can drive the same nodes instead (``autostart: false`` on
them; ``bond_timeout: 0.0`` on the manager, as these nodes hold no bond).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Log
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from cobot_hybrid_ros.bringup import (
    ACTIVE,
    STATE_NAMES,
    TRANSITIONS,
    BringupConfig,
    BringupError,
    StepResult,
    bring_up,
)
from cobot_hybrid_ros.diagnostics import diagnostic_array
from cobot_hybrid_ros.params import ParameterBinding, refuse_unknown_parameters
from cobot_hybrid_ros.runner import run_node

CONFIGS = (BringupConfig,)
_ROSOUT_QOS = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
_REASON_WAIT_S = 0.5   # a refused transition's error log may arrive just after the answer
_ERROR = 40            # rcl_interfaces/Log levels: ERROR 40, FATAL 50
_MAX_REASON = 1000     # characters of one error line kept as a refusal's reason
_LIVENESS_S = 0.5      # while waiting for an answer, check this often the node is still there


def resolve(name: str, namespace: str) -> str:
    """Return the full name of ``name`` as seen from a node in ``namespace``."""
    if name.startswith('/'):
        return name
    return f'{namespace.rstrip("/")}/{name}'


def logger_name(full_name: str) -> str:
    """Return the logger name ROS gives a node: ``/ns/node`` logs as ``ns.node``."""
    return full_name.strip('/').replace('/', '.')


class LifecycleManagerNode(Node):
    """Brings nodes up with :func:`bring_up` and watches them afterwards."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('lifecycle_manager_node', **kwargs)
        self._params = ParameterBinding(self, BringupConfig)
        refuse_unknown_parameters(self)
        cfg = self._params.config
        self._nodes = [resolve(n, self.get_namespace()) for n in cfg.node_names]
        self._change = {n: self.create_client(ChangeState, f'{n}/change_state')
                        for n in self._nodes}
        self._get = {n: self.create_client(GetState, f'{n}/get_state') for n in self._nodes}
        self._errors: dict[str, deque[tuple[float, str]]] = {
            logger_name(n): deque(maxlen=20) for n in self._nodes}
        self.create_subscription(Log, '/rosout', self._on_log, _ROSOUT_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, 'diagnostics', 10)
        self._states: dict[str, str] = {n: 'not brought up' for n in self._nodes}
        self._pending: dict[str, Any] = {}   # node -> its unanswered get_state call

    # --- LifecycleClient (blocking, used before spinning) -----------------------------------

    def wait_ready(self, node: str) -> bool:
        """Wait for the node's change_state and get_state services."""
        timeout = self._params.config.service_timeout_s
        return bool(self._change[node].wait_for_service(timeout_sec=timeout)
                    and self._get[node].wait_for_service(timeout_sec=timeout))

    def state(self, node: str) -> int | None:
        """Ask the node for its primary state."""
        response, _ = self._call(self._get[node], GetState.Request())
        return None if response is None else int(response.current_state.id)

    def change(self, node: str, transition: str) -> StepResult:
        """Request a transition; on refusal, the node's error log lines since the request."""
        since = time.time()
        request = ChangeState.Request(transition=Transition(id=TRANSITIONS[transition]))
        response, gone = self._call(self._change[node], request)
        if response is not None and response.success:
            return StepResult(True)
        deadline = time.monotonic() + _REASON_WAIT_S
        while time.monotonic() < deadline:
            rclpy.spin_once(self, timeout_sec=0.05)
        reasons = [text for stamp, text in self._errors[logger_name(node)] if stamp >= since - 1]
        if gone:
            reasons.insert(0, 'the node left the graph (died?) before answering')
        elif response is None:
            reasons.insert(0, 'no answer within transition_timeout_s '
                              f'{self._params.config.transition_timeout_s} s')
        return StepResult(False, '; '.join(reasons))

    def _call(self, client: Any, request: Any) -> tuple[Any, bool]:
        """Call and wait: (the response or None, whether the node left the graph meanwhile).

        Gives up at ``transition_timeout_s`` or as soon as the node's service disappears, so a
        node that died is not waited for (twice: once more for the undo) the whole timeout.
        """
        if not client.service_is_ready():
            return None, True
        future = client.call_async(request)
        deadline = time.monotonic() + self._params.config.transition_timeout_s
        while not future.done() and time.monotonic() < deadline:
            rclpy.spin_until_future_complete(self, future, timeout_sec=_LIVENESS_S)
            if not future.done() and not client.service_is_ready():
                return None, True
        return (future.result(), False) if future.done() else (None, False)

    def _on_log(self, msg: Log) -> None:
        errors = self._errors.get(msg.name)
        if errors is not None and msg.level >= _ERROR:   # a log line can be any size
            errors.append((msg.stamp.sec + msg.stamp.nanosec * 1e-9, msg.msg[:_MAX_REASON]))

    # --- after bring-up ---------------------------------------------------------------------

    def start_watching(self) -> None:
        """Check the nodes' states every ``check_period_s`` and publish diagnostics."""
        self.create_timer(self._params.config.check_period_s, self._check)

    def _check(self) -> None:
        for node in self._nodes:
            client = self._get[node]
            pending = self._pending.get(node)
            if (pending is not None and not pending.done()) or not client.service_is_ready():
                self._set(node, 'not answering')   # gone, or silent for a whole period
                continue
            future = client.call_async(GetState.Request())
            self._pending[node] = future
            future.add_done_callback(lambda f, n=node: self._record(n, f))
        bad = {n: s for n, s in self._states.items() if s != STATE_NAMES[ACTIVE]}
        level = 'ERROR' if bad else 'OK'
        message = (f'not active: {", ".join(f"{n} ({s})" for n, s in bad.items())}' if bad
                   else f'all {len(self._nodes)} nodes active')
        self._diag_pub.publish(diagnostic_array(self.get_clock(), f'{self.get_name()}: nodes',
                                                level, message, self._states))

    def _record(self, node: str, future: Any) -> None:
        response = future.result()
        state = int(response.current_state.id) if response is not None else 0
        self._set(node, STATE_NAMES.get(state, str(state)))

    def _set(self, node: str, name: str) -> None:
        if self._states.get(node) == STATE_NAMES[ACTIVE] and name != STATE_NAMES[ACTIVE]:
            self.get_logger().error(f'{node} left the active state: now {name}')
        self._states[node] = name


def _spin(node: LifecycleManagerNode) -> None:
    if node._params.config.autostart:
        for line in bring_up(node, node._nodes):
            node.get_logger().info(line)
        node.get_logger().info(f'all {len(node._nodes)} nodes active: '
                               f'{", ".join(node._nodes)}')
        node._states = dict.fromkeys(node._nodes, STATE_NAMES[ACTIVE])
    node.start_watching()
    rclpy.spin(node)


def main(args: list[str] | None = None) -> None:
    """Bring the nodes up, then watch them until interrupted."""
    run_node('lifecycle_manager_node', LifecycleManagerNode, (BringupError,), args,
             spin=_spin)


if __name__ == '__main__':
    main()
