"""The ``main()`` every node shell shares: init, make, spin, and a clear exit on bad input.

A node's expected errors (bad parameters, files, models) end the process with status 2 and
one fatal log line saying why, instead of a traceback; Ctrl-C and a ROS shutdown end it
quietly; ``cleanup`` (stop worker threads, close stores) and ``destroy_node`` always run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

__all__ = ['run_node']

NodeT = TypeVar('NodeT', bound=Node)


def run_node(name: str, make: Callable[[], NodeT], errors: tuple[type[Exception], ...],
             args: list[str] | None = None,
             spin: Callable[[NodeT], None] = rclpy.spin,
             cleanup: Callable[[NodeT], None] | None = None) -> None:
    """Run the node ``make()`` builds until ``spin`` returns or the process is interrupted."""
    expected: tuple[type[Exception], ...] = (*errors, ParameterException)
    rclpy.init(args=args)
    node = None
    try:
        node = make()
        spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except expected as exc:
        if node is not None:
            node.get_logger().fatal(str(exc))
        else:
            print(f'{name}: {exc}')
        raise SystemExit(2) from None
    finally:
        if node is not None:
            if cleanup is not None:
                cleanup(node)
            node.destroy_node()
        rclpy.try_shutdown()
