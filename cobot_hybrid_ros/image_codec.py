"""Image buffers <-> numpy arrays: the cv_bridge of cobot_hybrid, with no ROS import.

The functions here take and return the *fields* of ``sensor_msgs/Image`` and
``sensor_msgs/CompressedImage`` (height, width, encoding, step, endianness, bytes), so they are
tested without ROS; :mod:`cobot_hybrid_ros.images` maps messages onto them.

Receive path: :func:`image_view` returns a zero-copy view of the message buffer that honours
row padding (``step`` larger than a row) and big-endian data. Send path: :func:`image_fields`
packs an array into contiguous rows. :func:`convert_color` converts between bgr, rgb, bgra,
rgba and mono of the same bit depth. :func:`decode_compressed` / :func:`encode_compressed`
handle JPEG and PNG payloads in the ``image_transport`` format strings, including
``compressedDepth`` for 16-bit depth.
"""

from __future__ import annotations

import re
import struct
import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from cobot_hybrid_ros.errors import ImageCodecError

__all__ = [
    'ENCODINGS',
    'EncodingInfo',
    'ImageFields',
    'convert_color',
    'decode_compressed',
    'encode_compressed',
    'encoding_info',
    'image_fields',
    'image_view',
]

_HOST_BIGENDIAN = sys.byteorder == 'big'


@dataclass(frozen=True)
class EncodingInfo:
    """What one ``sensor_msgs/Image`` encoding string means for the pixel buffer."""

    name: str
    channels: int
    dtype: np.dtype[Any]
    order: str  # 'bgr', 'rgb', 'bgra', 'rgba', 'mono' or '' (no colour meaning, e.g. 32FC1)

    @property
    def pixel_bytes(self) -> int:
        """Bytes of one pixel (all channels)."""
        return self.channels * self.dtype.itemsize


def _build_encodings() -> dict[str, EncodingInfo]:
    table: dict[str, EncodingInfo] = {}
    colour = {
        'rgb8': (3, 'u1', 'rgb'), 'bgr8': (3, 'u1', 'bgr'),
        'rgba8': (4, 'u1', 'rgba'), 'bgra8': (4, 'u1', 'bgra'),
        'mono8': (1, 'u1', 'mono'),
        'rgb16': (3, 'u2', 'rgb'), 'bgr16': (3, 'u2', 'bgr'),
        'rgba16': (4, 'u2', 'rgba'), 'bgra16': (4, 'u2', 'bgra'),
        'mono16': (1, 'u2', 'mono'),
    }
    for name, (channels, dt, order) in colour.items():
        table[name] = EncodingInfo(name, channels, np.dtype(dt), order)
    depths = {'8U': 'u1', '8S': 'i1', '16U': 'u2', '16S': 'i2', '32S': 'i4', '32F': 'f4',
              '64F': 'f8'}
    for depth, dt in depths.items():
        for channels in (1, 2, 3, 4):
            name = f'{depth}C{channels}'
            table[name] = EncodingInfo(name, channels, np.dtype(dt), '')
    return table


#: Every encoding this module reads and writes, by its ``sensor_msgs`` name.
ENCODINGS: dict[str, EncodingInfo] = _build_encodings()


def encoding_info(encoding: str) -> EncodingInfo:
    """Look up an encoding; raise :class:`ImageCodecError` naming the supported ones."""
    try:
        return ENCODINGS[encoding]
    except KeyError:
        raise ImageCodecError(
            f'unsupported image encoding {encoding!r}; supported: {", ".join(sorted(ENCODINGS))}'
            '. Publish one of these (bayer and YUV formats must be debayered/converted first).'
        ) from None


@dataclass(frozen=True)
class ImageFields:
    """The fields of a ``sensor_msgs/Image``, ready to assign to a message."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


def image_view(data: Any, *, height: int, width: int, encoding: str, step: int,
               is_bigendian: int | bool = False, native: bool = False) -> npt.NDArray[Any]:
    """Return the pixels of an image buffer as a numpy array, without copying.

    ``data`` is anything exposing the buffer protocol (``bytes``, ``array.array`` as rclpy
    delivers ``uint8[]``). The result has shape ``(height, width)`` for one channel and
    ``(height, width, channels)`` otherwise; padding bytes at the end of each row are skipped
    through strides. Big-endian data keeps a big-endian dtype (still a view) unless ``native``
    is true, in which case it is byte-swapped into a new native-order array.
    """
    info = encoding_info(encoding)
    if height <= 0 or width <= 0:
        raise ImageCodecError(
            f'empty image ({width}x{height}, encoding {encoding}): nothing to convert; '
            'check the camera driver or drop the message')
    row_bytes = width * info.pixel_bytes
    if step < row_bytes:
        raise ImageCodecError(
            f'step {step} is smaller than one row of {width} {encoding} pixels '
            f'({row_bytes} bytes); the message is malformed (fix step at the publisher)')
    buf = memoryview(data).cast('B') if not isinstance(data, (bytes, bytearray)) else data
    if len(buf) != step * height:
        raise ImageCodecError(
            f'image data has {len(buf)} bytes but step*height = {step}*{height} = '
            f'{step * height}; the message is truncated or its step/height are wrong')
    dtype = info.dtype.newbyteorder('>' if is_bigendian else '<')
    if info.channels == 1:
        shape: tuple[int, ...] = (height, width)
        strides: tuple[int, ...] = (step, info.dtype.itemsize)
    else:
        shape = (height, width, info.channels)
        strides = (step, info.pixel_bytes, info.dtype.itemsize)
    view: npt.NDArray[Any] = np.ndarray(shape, dtype=dtype, buffer=buf, offset=0,
                                        strides=strides)
    if native and info.dtype.itemsize > 1 and bool(is_bigendian) != _HOST_BIGENDIAN:
        return view.astype(info.dtype.newbyteorder('='))
    return view


def image_fields(array: npt.NDArray[Any], encoding: str) -> ImageFields:
    """Pack an array as the fields of a ``sensor_msgs/Image`` with contiguous rows.

    The array's dtype must match the encoding (any byte order: the message records it).
    """
    info = encoding_info(encoding)
    expected_ndim = 2 if info.channels == 1 else 3
    if info.channels == 1 and array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != expected_ndim or (expected_ndim == 3 and array.shape[2] != info.channels):
        raise ImageCodecError(
            f'array of shape {array.shape} does not fit encoding {encoding} '
            f'({info.channels} channel(s)); expected (height, width'
            f'{f", {info.channels}" if info.channels > 1 else ""})')
    if array.dtype.kind != info.dtype.kind or array.dtype.itemsize != info.dtype.itemsize:
        raise ImageCodecError(
            f'array dtype {array.dtype} does not fit encoding {encoding} ({info.dtype}); '
            f'convert with array.astype(np.{info.dtype.name}) or pick another encoding')
    height, width = int(array.shape[0]), int(array.shape[1])
    if height == 0 or width == 0:
        raise ImageCodecError(f'empty array of shape {array.shape}: nothing to publish')
    byteorder = array.dtype.byteorder
    bigendian = (byteorder == '>') or (byteorder == '=' and _HOST_BIGENDIAN)
    if info.dtype.itemsize == 1:
        bigendian = False
    contiguous = np.ascontiguousarray(array)
    return ImageFields(height=height, width=width, encoding=encoding,
                       is_bigendian=int(bigendian), step=width * info.pixel_bytes,
                       data=contiguous.tobytes())


# (src order, dst order) -> OpenCV colour conversion code (None: same layout, just copy).
_CV_CODES: dict[tuple[str, str], int | None] = {
    ('bgr', 'rgb'): cv2.COLOR_BGR2RGB, ('rgb', 'bgr'): cv2.COLOR_RGB2BGR,
    ('bgr', 'mono'): cv2.COLOR_BGR2GRAY, ('rgb', 'mono'): cv2.COLOR_RGB2GRAY,
    ('mono', 'bgr'): cv2.COLOR_GRAY2BGR, ('mono', 'rgb'): cv2.COLOR_GRAY2RGB,
    ('bgra', 'bgr'): cv2.COLOR_BGRA2BGR, ('bgra', 'rgb'): cv2.COLOR_BGRA2RGB,
    ('rgba', 'bgr'): cv2.COLOR_RGBA2BGR, ('rgba', 'rgb'): cv2.COLOR_RGBA2RGB,
    ('bgra', 'mono'): cv2.COLOR_BGRA2GRAY, ('rgba', 'mono'): cv2.COLOR_RGBA2GRAY,
    ('bgr', 'bgra'): cv2.COLOR_BGR2BGRA, ('rgb', 'rgba'): cv2.COLOR_RGB2RGBA,
    ('bgr', 'rgba'): cv2.COLOR_BGR2RGBA, ('rgb', 'bgra'): cv2.COLOR_RGB2BGRA,
    ('bgra', 'rgba'): cv2.COLOR_BGRA2RGBA, ('rgba', 'bgra'): cv2.COLOR_RGBA2BGRA,
    ('mono', 'bgra'): cv2.COLOR_GRAY2BGRA, ('mono', 'rgba'): cv2.COLOR_GRAY2RGBA,
}


def convert_color(array: npt.NDArray[Any], src_encoding: str,
                  dst_encoding: str) -> npt.NDArray[Any]:
    """Convert pixels between bgr/rgb/bgra/rgba/mono encodings of the same bit depth.

    Same encoding in and out returns the input unchanged (no copy). Mono uses the ITU-R
    BT.601 luma weights, as OpenCV does. Alpha added by a conversion is opaque.
    """
    if src_encoding == dst_encoding:
        encoding_info(src_encoding)
        return array
    src, dst = encoding_info(src_encoding), encoding_info(dst_encoding)
    if not src.order or not dst.order:
        raise ImageCodecError(
            f'cannot convert {src_encoding} to {dst_encoding}: only bgr/rgb/bgra/rgba/mono '
            'encodings carry colour meaning; convert generic nCm buffers yourself')
    if src.dtype != dst.dtype:
        raise ImageCodecError(
            f'cannot convert {src_encoding} to {dst_encoding}: bit depth differs '
            f'({src.dtype} vs {dst.dtype}); scale the values explicitly first')
    code = _CV_CODES.get((src.order, dst.order))
    if code is None:
        raise ImageCodecError(f'no conversion from {src_encoding} to {dst_encoding}')
    if array.dtype.byteorder == '>' and not _HOST_BIGENDIAN:
        array = array.astype(array.dtype.newbyteorder('='))
    result: npt.NDArray[Any] = cv2.cvtColor(np.ascontiguousarray(array), code)
    return result


# ---------------------------------------------------------------------------------------------
# CompressedImage payloads
# ---------------------------------------------------------------------------------------------

_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# image_transport's compressedDepth prefix: int32 format + float32 depthParam[2].
_DEPTH_HEADER = struct.Struct('<iff')
_FORMAT_RE = re.compile(r'^\s*(?P<orig>[\w]+)\s*;\s*(?P<rest>.+)$')


def _parse_format(fmt: str) -> tuple[str | None, str]:
    """Split an image_transport format string into (original encoding, codec part)."""
    match = _FORMAT_RE.match(fmt)
    if match is None:
        return None, fmt.strip().lower()
    return match.group('orig'), match.group('rest').strip().lower()


def decode_compressed(data: Any, fmt: str) -> tuple[npt.NDArray[Any], str]:
    """Decode a ``sensor_msgs/CompressedImage`` payload; return (array, encoding).

    Accepts bare ``jpeg``/``png`` and image_transport strings such as
    ``rgb8; jpeg compressed bgr8`` (restored to rgb8) and ``16UC1; compressedDepth png``.
    The codec is taken from the payload's magic bytes, never trusted from the string alone.
    """
    payload = bytes(data)
    if not payload:
        raise ImageCodecError('compressed image has no data; nothing to decode')
    original, rest = _parse_format(fmt)
    if 'compresseddepth' in rest:
        if original not in (None, '16UC1', 'mono16'):
            raise ImageCodecError(
                f'compressedDepth of {original} is not supported (only 16UC1 depth in mm); '
                'publish depth as raw 16UC1/32FC1 or as 16UC1 compressedDepth')
        if len(payload) < _DEPTH_HEADER.size or payload[_DEPTH_HEADER.size:][:8] != _PNG_MAGIC:
            raise ImageCodecError(
                'compressedDepth payload does not hold a 12-byte header followed by PNG data')
        payload = payload[_DEPTH_HEADER.size:]
    if payload.startswith(_JPEG_MAGIC):
        codec = 'jpeg'
    elif payload.startswith(_PNG_MAGIC):
        codec = 'png'
    else:
        raise ImageCodecError(
            f'compressed image (format {fmt!r}) is neither JPEG nor PNG '
            f'(starts with {payload[:8]!r}); only jpeg and png payloads are supported')
    decoded = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageCodecError(f'corrupt {codec} payload ({len(payload)} bytes): '
                                   'OpenCV could not decode it')
    encoding = _decoded_encoding(decoded)
    if original is not None and original in ENCODINGS and original != encoding:
        target = ENCODINGS[original]
        if target.dtype == decoded.dtype and not target.order:
            # e.g. 16UC1 depth stored as mono16 PNG: same bytes, generic name.
            if target.channels == (1 if decoded.ndim == 2 else decoded.shape[2]):
                return decoded, original
        elif target.order:
            return convert_color(decoded, encoding, original), original
    return decoded, encoding


def _decoded_encoding(decoded: npt.NDArray[Any]) -> str:
    channels = 1 if decoded.ndim == 2 else int(decoded.shape[2])
    depth = '8' if decoded.dtype == np.uint8 else '16'
    names = {1: f'mono{depth}', 3: f'bgr{depth}', 4: f'bgra{depth}'}
    if channels not in names or decoded.dtype not in (np.uint8, np.uint16):
        raise ImageCodecError(
            f'decoded image has {channels} channels of {decoded.dtype}; not representable')
    return names[channels]


def encode_compressed(array: npt.NDArray[Any], encoding: str, fmt: str = 'jpeg',
                      quality: int = 90) -> tuple[bytes, str]:
    """Encode pixels as JPEG or PNG; return (payload, image_transport format string)."""
    info = encoding_info(encoding)
    fmt = fmt.lower()
    if fmt not in ('jpeg', 'png'):
        raise ImageCodecError(f'unsupported compression {fmt!r}; use jpeg or png')
    if not 1 <= quality <= 100:
        raise ImageCodecError(f'quality {quality} outside 1..100')
    depth = 8 if info.dtype.itemsize == 1 else 16
    if info.order in ('rgb', 'bgr'):
        target = f'bgr{depth}'
    elif info.order in ('rgba', 'bgra'):
        target = f'bgr{depth}' if fmt == 'jpeg' else f'bgra{depth}'
    elif info.order == 'mono':
        target = encoding
    elif info.channels == 1 and info.dtype in (np.dtype('u1'), np.dtype('u2')):
        target = ''  # generic 8UC1/16UC1: stored as mono of the same depth
    else:
        raise ImageCodecError(
            f'{encoding} cannot be stored as {fmt}; compress only 8/16-bit colour or mono')
    if target:
        pixels, coded_as = convert_color(array, encoding, target), target
    else:
        pixels, coded_as = array, f'mono{depth}'
    if fmt == 'jpeg' and pixels.dtype != np.uint8:
        raise ImageCodecError(f'JPEG holds 8-bit pixels only; {encoding} needs png')
    params = ([cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == 'jpeg'
              else [cv2.IMWRITE_PNG_COMPRESSION, 1])
    ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', np.ascontiguousarray(pixels),
                           params)
    if not ok:
        raise ImageCodecError(f'OpenCV failed to encode {encoding} as {fmt}')
    return buf.tobytes(), f'{encoding}; {fmt} compressed {coded_as}'
