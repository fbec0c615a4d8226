"""The ``main()`` every node shell shares: init, make, spin, and a clear exit on bad input.

A node's expected errors (bad parameters, files, models) end the process with status 2 and
one fatal log line saying why, instead of a traceback; Ctrl-C and a ROS shutdown end it
quietly; ``cleanup`` (stop worker threads, close stores) and ``destroy_node`` always run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node

from cobot_hybrid_protocol.settings import setting
from cobot_hybrid_ros.errors import RosHelperError

__all__ = ['AutostartSetting', 'autostart', 'run_node']

NodeT = TypeVar('NodeT', bound=Node)


def run_node(name: str, make: Callable[[], NodeT], errors: tuple[type[Exception], ...],
             args: list[str] | None = None,
             spin: Callable[[NodeT], None] = rclpy.spin,
             cleanup: Callable[[NodeT], None] | None = None) -> None:
    """Run the node ``make()`` builds until ``spin`` returns or the process is interrupted."""
    expected: tuple[type[Exception], ...] = (*errors, ParameterException, RosHelperError)
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


@dataclass(frozen=True)
class AutostartSetting:
    """The one source of every lifecycle node's ``autostart`` (``same_as`` it)."""

    autostart: bool = setting(True, 'configure and activate at start (without a lifecycle '
                              'manager)')


def autostart(node: LifecycleNode) -> None:
    """Configure, then activate a lifecycle node; a refused step ends the process (status 2).

    Without a lifecycle manager nothing else would notice a node that failed to configure
    (a model that did not load): it would sit there inactive and look alive.
    """
    for step, trigger in (('configure', node.trigger_configure),
                          ('activate', node.trigger_activate)):
        if trigger() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().fatal(f'{step} failed (the reason is logged above); exiting '
                                    'rather than running half-configured')
            raise SystemExit(2)
