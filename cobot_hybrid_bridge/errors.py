"""Errors raised by the bridge cores.

Hierarchy::

    BridgeError   base of every bridge error; narrow subclasses are added with their cores
"""


class BridgeError(Exception):
    """Base class of every error raised by cobot_hybrid_bridge."""
