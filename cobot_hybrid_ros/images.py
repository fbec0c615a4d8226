"""sensor_msgs images <-> numpy, on top of the pure :mod:`cobot_hybrid_ros.image_codec`.

Receiving is zero-copy: :func:`image_to_numpy` returns a view of the message's buffer, valid
as long as the message lives. Sending copies the pixels once into the message.
"""

from __future__ import annotations

from typing import Any

import numpy.typing as npt
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from cobot_hybrid_ros import image_codec


def image_to_numpy(msg: Image, *, native: bool = False) -> npt.NDArray[Any]:
    """View the pixels of a ``sensor_msgs/Image`` (raises ImageCodecError if malformed)."""
    return image_codec.image_view(msg.data, height=msg.height, width=msg.width,
                                  encoding=msg.encoding, step=msg.step,
                                  is_bigendian=msg.is_bigendian, native=native)


def numpy_to_image(array: npt.NDArray[Any], encoding: str,
                   header: Header | None = None) -> Image:
    """Build a ``sensor_msgs/Image`` holding a copy of ``array``."""
    fields = image_codec.image_fields(array, encoding)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height = fields.height
    msg.width = fields.width
    msg.encoding = fields.encoding
    msg.is_bigendian = fields.is_bigendian
    msg.step = fields.step
    msg.data = fields.data
    return msg


def compressed_to_numpy(msg: CompressedImage) -> tuple[npt.NDArray[Any], str]:
    """Decode a ``sensor_msgs/CompressedImage``; return (pixels, encoding)."""
    return image_codec.decode_compressed(msg.data, msg.format)


def numpy_to_compressed(array: npt.NDArray[Any], encoding: str, fmt: str = 'jpeg',
                        quality: int = 90, header: Header | None = None) -> CompressedImage:
    """Build a ``sensor_msgs/CompressedImage`` (JPEG or PNG) from pixels."""
    payload, format_string = image_codec.encode_compressed(array, encoding, fmt, quality)
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = format_string
    msg.data = payload
    return msg


def image_to_encoding(msg: Image, encoding: str) -> npt.NDArray[Any]:
    """Pixels of ``msg`` in ``encoding`` (a view when it already matches, else converted)."""
    return image_codec.convert_color(image_to_numpy(msg), msg.encoding, encoding)
