"""Errors raised by the perception cores.

Hierarchy::

    PerceptionError
    ├── ConfigError            a parameter value is out of range or inconsistent
    ├── ImageConversionError   an image cannot be the detector's input (letterbox.py); the
    │                          codec's own errors are cobot_hybrid_ros.errors.ImageCodecError
    ├── MediaSourceError       a photo, folder or video cannot be opened (media.py)
    ├── ModelLoadError         a model file is missing, corrupt or of an unsupported kind
    ├── BackendUnavailableError  an inference runtime asked for by name cannot run here
    ├── ModelOutputError       a model's output has an unrecognised shape or NaNs
    ├── LocalizationError      a detection cannot be placed in 3D (localization.py)
    ├── MalformedInputError    a person or robot state handed to the SSM is unusable (ssm.py)
    ├── ArmPoseError           a joint state cannot give the arm's pose (arm_geometry.py)
    └── TrackingError          boxes, scores or a time the tracker cannot take (tracking.py)

Messages say what was wrong and what to do about it.
"""


class PerceptionError(Exception):
    """Base class of every error raised by cobot_hybrid_perception."""


class ImageConversionError(PerceptionError, ValueError):
    """An image message or array cannot be converted as asked."""


class ConfigError(PerceptionError, ValueError):
    """A configuration value is invalid; the message names the parameter and the fix."""


class ModelLoadError(PerceptionError, ValueError):
    """A model file is missing, corrupt, or its inputs/metadata are not what we can run."""


class BackendUnavailableError(PerceptionError, RuntimeError):
    """The inference backend asked for cannot run on this machine (library or device missing)."""


class ModelOutputError(PerceptionError, ValueError):
    """A model produced an output we cannot decode (unknown shape, NaNs)."""
