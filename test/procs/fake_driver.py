"""Child process: a stand-in robot driver that records what it is told, one JSON line each.

Subscribes to ``--factor-topic`` (``control_msgs/SpeedScalingFactor``, reliable + transient
local like the ros2_control JTC's ``~/speed_scaling_input``) and serves
``--slider-service`` (``ur_msgs/SetSpeedSliderFraction``, refusing fractions outside
[0.01, 1] as the UR driver does), ``--stop-trigger`` and ``--resume-trigger``
(``std_srvs/Trigger``) and ``--stop-setbool`` (``std_srvs/SetBool``). Every message or request
is appended to ``--record`` as ``{"kind", "value", "success", "t"}`` (``t``: monotonic). The
first ``--refuse-first`` service requests are answered ``success: false``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def main() -> None:
    """Serve and record until interrupted."""
    import rclpy
    from control_msgs.msg import SpeedScalingFactor
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
    args = parser.parse_args()

    rclpy.init()
    node = rclpy.create_node('fake_driver')
    record = args.record.open('a', buffering=1)
    served = [0]

    def write(kind: str, value: Any, success: bool = True) -> None:
        record.write(json.dumps({'kind': kind, 'value': value, 'success': success,
                                 't': time.monotonic()}) + '\n')

    def answer(kind: str, value: Any, valid: bool = True) -> bool:
        served[0] += 1
        success = valid and served[0] > args.refuse_first
        write(kind, value, success)
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
    node.create_service(SetSpeedSliderFraction, args.slider_service, on_slider)
    node.create_service(Trigger, args.stop_trigger, on_trigger('stop'))
    node.create_service(Trigger, args.resume_trigger, on_trigger('resume'))
    node.create_service(SetBool, args.stop_setbool, on_setbool)
    print('fake driver ready', flush=True)
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        record.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
