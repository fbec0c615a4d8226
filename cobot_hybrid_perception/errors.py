"""Errors raised by the perception cores.

Hierarchy::

    PerceptionError
    ├── ConfigError            a parameter value is out of range or inconsistent
    ├── ImageConversionError   an image buffer, encoding or compressed payload is unusable
    └── MediaSourceError       a photo, folder or video cannot be opened (media.py)

Messages say what was wrong and what to do about it.
"""


class PerceptionError(Exception):
    """Base class of every error raised by cobot_hybrid_perception."""


class ImageConversionError(PerceptionError, ValueError):
    """An image message or array cannot be converted as asked."""


class ConfigError(PerceptionError, ValueError):
    """A configuration value is invalid; the message names the parameter and the fix."""
