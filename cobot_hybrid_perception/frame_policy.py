"""What the perception nodes do with a frame of each ``sensor_msgs`` encoding.

Detector input (:func:`frame_action`, :func:`for_inference`):

* ``bgr8``, ``rgb8``, ``mono8`` go to inference as they are (the letterbox reads them);
* other 8-bit colour encodings (``bgra8``, ``rgba8``) are converted to ``bgr8`` first;
* everything else (16-bit colour and mono, generic ``nCm`` buffers such as depth, unknown
  names) is refused: :func:`for_inference` raises :class:`ImageCodecError` saying why, and
  the node counts the frame as failed.

Depth input of the safety monitor (:func:`depth_scale_m`): ``16UC1`` / ``mono16`` in
millimetres, ``32FC1`` in metres; any other encoding is refused.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.errors import PerceptionError
from cobot_hybrid_ros.image_codec import ENCODINGS, convert_color

__all__ = ['CONVERTED_TO', 'DEPTH_SCALES_M', 'INFERENCE_ENCODINGS', 'FrameAction',
           'depth_scale_m', 'for_inference', 'frame_action']

FrameAction = Literal['infer', 'convert', 'refuse']

#: Encodings the detector takes as they are.
INFERENCE_ENCODINGS = frozenset({'bgr8', 'rgb8', 'mono8'})
#: What every other convertible encoding becomes before inference.
CONVERTED_TO = 'bgr8'
#: Metres per depth unit, by depth encoding.
DEPTH_SCALES_M: dict[str, float] = {'16UC1': 1e-3, 'mono16': 1e-3, '32FC1': 1.0}


def frame_action(encoding: str) -> FrameAction:
    """Return whether a frame in ``encoding`` is inferred as is, converted to bgr8 or refused."""
    if encoding in INFERENCE_ENCODINGS:
        return 'infer'
    info = ENCODINGS.get(encoding)
    if info is not None and info.order and info.dtype == np.dtype(np.uint8):
        return 'convert'
    return 'refuse'


def for_inference(pixels: npt.NDArray[Any], encoding: str) -> tuple[npt.NDArray[Any], str]:
    """Return (pixels, encoding) as the detector takes them (the input itself if it can).

    A refused encoding raises :class:`~cobot_hybrid_ros.errors.ImageCodecError` with the
    codec's reason (no colour meaning, another bit depth, unknown name).
    """
    if frame_action(encoding) == 'infer':
        return pixels, encoding
    return convert_color(pixels, encoding, CONVERTED_TO), CONVERTED_TO


def depth_scale_m(encoding: str) -> float:
    """Return metres per unit of a depth image; PerceptionError for any other encoding."""
    try:
        return DEPTH_SCALES_M[encoding]
    except KeyError:
        raise PerceptionError(f'depth encoding {encoding!r}: publish 16UC1 (mm) or '
                              '32FC1 (m) aligned to the detection image') from None
