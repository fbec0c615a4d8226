"""Errors of the robot-cloud contract.

Hierarchy::

    ProtocolError        base of every protocol error
      PayloadError       an input broke a parsing limit or is not JSON/YAML; ``reason`` says
                         which (one of ``limits.PAYLOAD_REASONS``)
"""

from __future__ import annotations

__all__ = ['PayloadError', 'ProtocolError']


class ProtocolError(Exception):
    """Base class of every error raised by cobot_hybrid_protocol."""


class PayloadError(ProtocolError, ValueError):
    """An input is not acceptable; ``reason`` is a short, countable name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail
