"""``driver_adapter_node``: tells a robot driver what the safety monitor decided, lifecycle node.

Subscribes (relative names) to ``speed_scale`` (``std_msgs/Float64``) and ``protective_stop``
(``std_msgs/Bool``), reliable + transient local like the monitor publishes them, and drives
the one output ``output`` names (the decision is :mod:`cobot_hybrid_perception.driver_adapter`):

* ``speed_scaling_factor``: publishes ``control_msgs/SpeedScalingFactor`` on
  ``speed_scaling_topic`` (reliable + transient local, as the ros2_control joint trajectory
  controller's ``~/speed_scaling_input`` expects), on every change and every
  ``publish_period_s``;
* ``ur_speed_slider``: calls ``ur_msgs/SetSpeedSliderFraction`` on ``speed_slider_service``;
* ``stop_trigger``: calls ``std_srvs/Trigger`` on ``stop_service`` when the robot must stop and
  on ``resume_service`` (empty: none) when it may move again;
* ``stop_setbool``: calls ``std_srvs/SetBool`` on ``stop_service``, true to stop, false to resume.

Silence (no input for ``input_timeout_s``, or none yet) and invalid values command a stop and
hold it. Publishes ``diagnostics`` (output, commanded value, reason, calls made/failed) at 2 Hz
and on every change of reason. Lifecycle: wired in ``on_configure``, commands only while
active; deactivating, shutting down and leaving the process (Ctrl-C, SIGTERM) command a stop
first, sent at once even while another call is unanswered. A stop (or a lower slider fraction)
does not wait for a call in flight either: that call is abandoned, and its late answer, still
listened for, confirms nothing. The watchdog timer runs on the steady clock, so a stalled
``/clock`` cannot hide silence.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import rclpy
from control_msgs.msg import SpeedScalingFactor
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import uninstall_signal_handlers
from rclpy.task import Future
from std_msgs.msg import Bool, Float64
from std_srvs.srv import SetBool, Trigger
from ur_msgs.srv import SetSpeedSliderFraction

from cobot_hybrid_perception.driver_adapter import (
    KEEP_ABANDONED,
    RESUME,
    AdapterConfig,
    Call,
    DriverAdapter,
    Step,
    tick_period_s,
)
from cobot_hybrid_perception.errors import ConfigError, PerceptionError
from cobot_hybrid_protocol.settings import check_settings, same_as, setting
from cobot_hybrid_ros.diagnostics import diagnostic_array
from cobot_hybrid_ros.params import ParameterBinding, refuse_unknown_parameters
from cobot_hybrid_ros.runner import AutostartSetting, autostart, run_node

_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass(frozen=True)
class AdapterNodeConfig:
    """The shell's wiring: where the outputs go (how it decides is :class:`AdapterConfig`)."""

    speed_scaling_topic: str = setting('speed_scaling_factor', 'speed_scaling_factor: topic '
                                       'of the SpeedScalingFactor (JTC: '
                                       '/<controller>/speed_scaling_input)')
    speed_slider_service: str = setting('io_and_status_controller/set_speed_slider',
                                        'ur_speed_slider: the SetSpeedSliderFraction service')
    stop_service: str = setting('stop', 'stop_trigger: the Trigger called to stop; '
                                'stop_setbool: the SetBool (true: stop, false: resume)')
    resume_service: str = setting('', 'stop_trigger: the Trigger called when the robot may '
                                  'move again (empty: none)')
    autostart: bool = same_as(AutostartSetting, 'autostart')

    def __post_init__(self) -> None:
        check_settings(self, ConfigError)


#: Every config whose settings this node declares (checked against config/*.yaml).
CONFIGS = (AdapterConfig, AdapterNodeConfig)


class DriverAdapterNode(LifecycleNode):
    """Lifecycle shell around :class:`DriverAdapter`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('driver_adapter_node', **kwargs)
        self._params = ParameterBinding(self, AdapterConfig)
        self._shell = ParameterBinding(self, AdapterNodeConfig)
        refuse_unknown_parameters(self)   # a misspelt key is an error
        self._adapter: DriverAdapter | None = None
        self._active = False
        self._entities: list[Any] = []
        self._driver_clients: dict[str, Any] = {}
        self._futures: dict[int, Future] = {}
        self._abandoned: dict[int, Future] = {}   # (their late answers are still listened for)
        self._factor_pub: Any = None
        self._diag_pub: Any = None
        self._timer: Any = None

    # --- lifecycle ---------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Wire the inputs, the output and the watchdog timer."""
        cfg, shell = self._params.config, self._shell.config
        self._adapter = DriverAdapter(cfg, has_resume=bool(shell.resume_service))
        self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, 'diagnostics', 10)
        try:
            target = self._wire_output(cfg.output, shell)
        except Exception as exc:  # noqa: BLE001 - a bad name: refuse the transition, say why
            self.get_logger().error(f'{cfg.output}: cannot wire the output: {exc}')
            self._release()
            return TransitionCallbackReturn.FAILURE
        self._entities = [
            self.create_subscription(Float64, 'speed_scale', self._on_speed_scale, _LATCHED),
            self.create_subscription(Bool, 'protective_stop', self._on_protective_stop,
                                     _LATCHED),
        ]
        self._timer = self.create_timer(tick_period_s(cfg), self._on_tick, autostart=False,
                                        clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f'configured: output {cfg.output} -> {target}, input timeout '
            f'{cfg.input_timeout_s:g} s (silence or a bad value commands a stop)')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start commanding (a stop, until fresh input arrives)."""
        result = super().on_activate(state)
        if self._adapter is not None:
            self._adapter.input.release()   # (a stop held since the last deactivate)
        self._active = True
        self._timer.reset()
        self._on_tick()
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Command a stop, then stop commanding."""
        self._command_stop('deactivated')
        self._active = False
        self._timer.cancel()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Drop the topics, clients and the adapter."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Command a stop if active, then release everything."""
        if self._active:
            self._command_stop('shutting down')
        self._active = False
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Command a stop on the way out (Ctrl-C, a launch shutdown), then destroy the node.

        rclpy's signal handler destroys every node before it invalidates the context, so the
        stop can still be published here; after a SIGKILL nothing can be.
        """
        if getattr(self, '_active', False):   # (False too if __init__ raised)
            try:
                assert self._adapter is not None
                self._command_stop('exiting', wait_s=self._adapter.cfg.call_timeout_s)
            except Exception as exc:  # noqa: BLE001 - the process ends anyway: say so
                self.get_logger().error(f'could not command the exit stop: {exc}')
            self._active = False
        super().destroy_node()

    def _wire_output(self, output: str, shell: AdapterNodeConfig) -> str:
        if output == 'speed_scaling_factor':
            self._factor_pub = self.create_lifecycle_publisher(
                SpeedScalingFactor, shell.speed_scaling_topic, _LATCHED)
            return self._factor_pub.topic_name
        if output == 'ur_speed_slider':
            names = {'slider': (SetSpeedSliderFraction, shell.speed_slider_service)}
        elif output == 'stop_trigger':
            names = {'stop': (Trigger, shell.stop_service)}
            if shell.resume_service:
                names['resume'] = (Trigger, shell.resume_service)
        else:
            names = {'stop': (SetBool, shell.stop_service)}
        self._driver_clients = {key: self.create_client(kind, name)
                         for key, (kind, name) in names.items()}
        return ', '.join(client.service_name for client in self._driver_clients.values())

    def _release(self) -> None:
        for future in (*self._futures.values(), *self._abandoned.values()):
            future.cancel()
        self._futures, self._abandoned = {}, {}
        for entity in self._entities:
            self.destroy_subscription(entity)
        self._entities = []
        for client in self._driver_clients.values():
            self.destroy_client(client)
        self._driver_clients = {}
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        for name in ('_factor_pub', '_diag_pub'):
            pub = getattr(self, name)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, name, None)
        self._adapter = None

    # --- inputs ------------------------------------------------------------------------------

    def _on_speed_scale(self, msg: Float64) -> None:
        self._run(lambda adapter, now: adapter.on_speed_scale(now, msg.data))

    def _on_protective_stop(self, msg: Bool) -> None:
        self._run(lambda adapter, now: adapter.on_protective_stop(now, msg.data))

    def _on_tick(self) -> None:
        self._run(lambda adapter, now: adapter.tick(now))

    def _run(self, decide: Callable[[DriverAdapter, float], Step]) -> None:
        """Decide with the core, then do what it says (only while active)."""
        adapter = self._adapter
        if adapter is None or not self._active:
            return
        now = time.monotonic()
        self._act(decide(adapter, now), now)
        if adapter.diagnostics_due(now):
            self._diag_pub.publish(diagnostic_array(
                self.get_clock(), f'{self.get_name()}: {adapter.cfg.output}', adapter.level(),
                adapter.last.detail, adapter.diagnostic_values(now)))

    # --- outputs -----------------------------------------------------------------------------

    def _act(self, step: Step, now: float) -> None:
        if step.abandon is not None:
            self._abandon(step.abandon)
        if step.publish is not None and self._factor_pub is not None:
            self._factor_pub.publish(SpeedScalingFactor(factor=float(step.publish)))
        if step.call is not None:
            self._start(step.call, now)

    def _start(self, call: Call, now: float) -> None:
        assert self._adapter is not None
        output = self._adapter.cfg.output
        if output == 'ur_speed_slider':
            client = self._driver_clients['slider']
            request: Any = SetSpeedSliderFraction.Request(
                speed_slider_fraction=float(call.request))
        elif output == 'stop_trigger':
            client = self._driver_clients['resume' if call.request == RESUME else 'stop']
            request = Trigger.Request()
        else:
            client = self._driver_clients['stop']
            request = SetBool.Request(data=bool(call.request))
        if not client.service_is_ready():
            self._adapter.unavailable(now, call.id, f'service {client.service_name} not available')
            return
        future = client.call_async(request)
        self._futures[call.id] = future
        future.add_done_callback(lambda done: self._on_answer(call, done))

    def _on_answer(self, call: Call, future: Future) -> None:
        self._futures.pop(call.id, None)
        late = self._abandoned.pop(call.id, None) is not None
        adapter = self._adapter
        if adapter is None or future.cancelled():
            return
        if late:
            self.get_logger().warning(f'late answer to the abandoned {call.request!r} call (it '
                                      'confirms nothing)', throttle_duration_sec=5.0)
        now = time.monotonic()
        try:
            response = future.result()
        except Exception as exc:  # noqa: BLE001 - a failed call is counted and retried
            adapter.unavailable(now, call.id, f'{type(exc).__name__}: {exc}')
            return
        success = bool(getattr(response, 'success', False))
        message = str(getattr(response, 'message', ''))
        if not success:
            self.get_logger().warning(f'driver refused {call.request!r}: {message or "-"}',
                                      throttle_duration_sec=5.0)
        self._run(lambda adapter, now: adapter.answered(now, call.id, success, message))

    def _abandon(self, call: Call) -> None:
        """Stop waiting for a call; keep listening for its answer (the core decides what it means).

        Only the newest ``KEEP_ABANDONED`` are kept, so a driver that never answers cannot grow
        the client's pending requests without bound.
        """
        future = self._futures.pop(call.id, None)
        if future is None:
            return
        self._abandoned[call.id] = future
        while len(self._abandoned) > KEEP_ABANDONED:
            oldest = self._abandoned.pop(next(iter(self._abandoned)))
            for client in self._driver_clients.values():
                client.remove_pending_request(oldest)
            oldest.cancel()
        self.get_logger().warning(f'stopped waiting for the answer to {call.request!r} '
                                  '(call abandoned)', throttle_duration_sec=5.0)

    def _command_stop(self, why: str, wait_s: float = 0.0) -> None:
        """Tell the driver to stop on the way out; wait up to ``wait_s`` for the answer.

        The stop is sent even if the driver confirmed one already, and even while another call
        is in flight (that call is abandoned).
        """
        adapter = self._adapter
        if adapter is None:
            return
        self.get_logger().info(f'{why}: commanding a stop')
        now = time.monotonic()
        step = adapter.stop_now(now, f'driver adapter {why}')
        self._act(step, now)
        future = None if step.call is None else self._futures.get(step.call.id)
        if future is not None and wait_s > 0.0:
            rclpy.spin_until_future_complete(self, future, timeout_sec=wait_s)


_exit_requested = threading.Event()


def _interrupt(signum: int, frame: object) -> None:
    # Only a flag: an exception raised here lands inside rclpy's C calls, which turn it into a
    # RuntimeError ("Unable to convert call argument") and the process ends in a traceback.
    _exit_requested.set()


def _spin(node: DriverAdapterNode) -> None:
    # rclpy's own SIGINT/SIGTERM handler invalidates the context before any Python code runs,
    # so the exit stop could not be published: take both as a request to leave the spin loop
    # instead, and destroy_node (called by run_node on the way out) commands the stop.
    uninstall_signal_handlers()
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if node._shell.config.autostart:
        autostart(node)
    while rclpy.ok() and not _exit_requested.is_set():
        rclpy.spin_once(node, timeout_sec=0.1)


def main(args: list[str] | None = None) -> None:
    """Run the driver adapter until interrupted."""
    run_node('driver_adapter_node', DriverAdapterNode, (PerceptionError,), args, spin=_spin)


if __name__ == '__main__':
    main()
