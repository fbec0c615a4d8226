"""Errors of the robot-cloud contract.

Hierarchy::

    ProtocolError        base of every protocol error
      PayloadError       an input broke a parsing limit or is not JSON/YAML; ``reason`` says
                         which (one of ``limits.PAYLOAD_REASONS``)
      SchemaError        a decoded object does not follow its schema (mission, task progress,
                         mission ack, uplink envelope); the message names the field
      CrdtError          a CRDT snapshot (robot state) is malformed
      TopicError         a topic is not in the ``cobot/v1`` tree, or a robot id cannot be one
        RobotIdError     a robot id that cannot be one topic level, or is reserved
      SignatureError     a signed command envelope failed a check; ``reason`` says which
                         (one of ``signing.SIGNATURE_REASONS``)
      KeyFileError       a signing or verification key file cannot be read or is not Ed25519
      BrokerAuthError    broker credentials incomplete, or their files missing (broker_auth.py)

Every one of them except KeyFileError is also a ``ValueError`` (bad input, not a bad program).
"""

from __future__ import annotations

__all__ = ['BrokerAuthError', 'CrdtError', 'KeyFileError', 'PayloadError', 'ProtocolError',
           'RobotIdError', 'SchemaError', 'SignatureError', 'TopicError']


class ProtocolError(Exception):
    """Base class of every error raised by cobot_hybrid_protocol."""


class PayloadError(ProtocolError, ValueError):
    """An input is not acceptable; ``reason`` is a short, countable name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


class SchemaError(ProtocolError, ValueError):
    """A decoded object does not follow its schema; the message names the field."""


class CrdtError(ProtocolError, ValueError):
    """A CRDT snapshot is malformed."""


class TopicError(ProtocolError, ValueError):
    """A topic that is not part of the ``cobot/v1`` tree."""


class RobotIdError(TopicError):
    """A robot id that cannot be one topic level, or is reserved."""


class SignatureError(ProtocolError, ValueError):
    """A signed envelope failed a check; ``reason`` is a short, countable name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


class KeyFileError(ProtocolError):
    """A key file cannot be read, or holds no Ed25519 key; the message names the file."""


class BrokerAuthError(ProtocolError, ValueError):
    """Broker credentials are incomplete or inconsistent, or a file of them is missing."""
