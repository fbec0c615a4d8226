"""Errors raised by the shared node helpers.

Hierarchy::

    RosHelperError        base of every error of cobot_hybrid_ros
      ImageCodecError     an image message, buffer or compressed payload cannot be converted
                          as asked (also a ValueError)
      UnknownParameterError  a params file or ``-p`` names a parameter the node does not have
      ProfileError        ``cobot-hybrid profile`` was given something it cannot measure or read
"""


class RosHelperError(Exception):
    """Base class of every error raised by cobot_hybrid_ros."""


class ImageCodecError(RosHelperError, ValueError):
    """An image message, buffer or compressed payload cannot be converted as asked."""


class UnknownParameterError(RosHelperError, ValueError):
    """A parameter given to a node (params file, ``-p``) that it does not declare."""


class ProfileError(RosHelperError, ValueError):
    """``cobot-hybrid profile`` was given bad options or a recorded profile it cannot read."""
