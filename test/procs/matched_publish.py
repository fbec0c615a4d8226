"""Helper of the child-process publishers: publish once matched, leave once read."""

import time
from collections.abc import Callable
from typing import Any


def publish_when_matched(node: Any, pub: Any, make_msg: Callable[[], Any], count: int,
                         period_s: float = 0.05, timeout_s: float = 20.0) -> None:
    """Wait for a subscriber, publish ``count`` messages, then wait for it to leave.

    Staying until the subscriber has gone keeps reliable delivery of the last sample from
    being cut short by this process exiting.
    """
    import rclpy

    deadline = time.monotonic() + timeout_s
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    for _ in range(count):
        pub.publish(make_msg())
        rclpy.spin_once(node, timeout_sec=period_s)
    deadline = time.monotonic() + timeout_s
    while pub.get_subscription_count() > 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
