"""Child process: a lifecycle node that dies (os._exit) in the middle of its configure."""

from __future__ import annotations

import os
import time


def main() -> None:
    """Serve the lifecycle services until configure is requested, then die without a word."""
    import rclpy
    from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

    class Dying(LifecycleNode):
        def on_configure(self, state: object) -> TransitionCallbackReturn:
            print('configure requested: dying', flush=True)
            time.sleep(0.2)
            os._exit(1)

    rclpy.init()
    rclpy.spin(Dying('camera_driver'))


if __name__ == '__main__':
    main()
