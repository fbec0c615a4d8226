"""Child process: a stand-in robot driver that records what it is told, one JSON line each.

Subscribes to ``--factor-topic`` (``control_msgs/SpeedScalingFactor``, reliable + transient
local like the ros2_control JTC's ``~/speed_scaling_input``) and serves
``--slider-service`` (``ur_msgs/SetSpeedSliderFraction``, refusing fractions outside
[0.01, 1] as the UR driver does), ``--stop-trigger`` and ``--resume-trigger``
(``std_srvs/Trigger``) and ``--stop-setbool`` (``std_srvs/SetBool``). Every message or request
is appended to ``--record`` as ``{"kind", "value", "success", "t"}`` (``t``: monotonic). The
first ``--refuse-first`` service requests are answered ``success: false``.

``--slow KIND`` (repeatable: ``slider``, ``stop``, ``resume``, ``setbool``) makes a service
record and act on a request at once but answer only after ``--answer-delay-s``, as a driver
that executes and then blocks; meanwhile the other services keep answering. Each delayed
answer, when it is sent, is recorded as ``{"kind": "answered", "value": KIND, ...}``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any


def main() -> None:
    """Serve and record until interrupted."""
    import rclpy
    from control_msgs.msg import SpeedScalingFactor
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_srvs.srv import SetBool, Trigger
    from ur_msgs.srv import SetSpeedSliderFraction

    parser = argparse.ArgumentParser()
    parser.add_argument('--record', type=Path, required=True)
    parser.add_argument('--factor-topic', default='speed_scaling_factor')
    parser.add_argument('--slider-service', default='io_and_status_controller/set_speed_slider')
    parser.add_argument('--stop-trigger', default='stop')
    parser.add_argument('--resume-trigger', default='resume')
    parser.add_argument('--stop-setbool', default='set_stop')
    parser.add_argument('--refuse-first', type=int, default=0)
    parser.add_argument('--slow', action='append', default=[],
                        choices=('slider', 'stop', 'resume', 'setbool'))
    parser.add_argument('--answer-delay-s', type=float, default=0.0)
    args = parser.parse_args()

    rclpy.init()
    node = rclpy.create_node('fake_driver')
    record = args.record.open('a', buffering=1)
    served = [0]
    lock = threading.Lock()           # (slow services answer from their own threads)
    exiting = threading.Event()       # cuts the delays short at exit

    def write(kind: str, value: Any, success: bool = True) -> None:
        with lock:
            if record.closed:   # (a delayed answer woken at exit)
                return
            record.write(json.dumps({'kind': kind, 'value': value, 'success': success,
                                     't': time.monotonic()}) + '\n')

    def answer(kind: str, value: Any, valid: bool = True) -> bool:
        with lock:
            served[0] += 1
            success = valid and served[0] > args.refuse_first
        write(kind, value, success)
        if kind in args.slow:
            exiting.wait(args.answer_delay_s)
            write('answered', kind, success)
        return success

    def on_slider(request: Any, response: Any) -> Any:
        fraction = request.speed_slider_fraction
        response.success = answer('slider', fraction, 0.01 <= fraction <= 1.0)
        return response

    def on_trigger(kind: str) -> Any:
        def serve(request: Any, response: Any) -> Any:
            response.success = answer(kind, None)
            response.message = 'ok' if response.success else 'refused (fake driver)'
            return response
        return serve

    def on_setbool(request: Any, response: Any) -> Any:
        response.success = answer('setbool', bool(request.data))
        response.message = 'ok' if response.success else 'refused (fake driver)'
        return response

    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(SpeedScalingFactor, args.factor_topic,
                             lambda msg: write('factor', msg.factor), latched)
    slow = ReentrantCallbackGroup()   # a delayed answer blocks only its own thread

    def group(kind: str) -> Any:
        return slow if kind in args.slow else None

    node.create_service(SetSpeedSliderFraction, args.slider_service, on_slider,
                        callback_group=group('slider'))
    node.create_service(Trigger, args.stop_trigger, on_trigger('stop'),
                        callback_group=group('stop'))
    node.create_service(Trigger, args.resume_trigger, on_trigger('resume'),
                        callback_group=group('resume'))
    node.create_service(SetBool, args.stop_setbool, on_setbool, callback_group=group('setbool'))
    executor = MultiThreadedExecutor(num_threads=8)
    executor.add_node(node)
    print('fake driver ready', flush=True)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        exiting.set()
        executor.shutdown(timeout_sec=5.0)
        with lock:
            record.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
