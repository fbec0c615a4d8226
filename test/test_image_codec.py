"""Unit and property tests of the pure image codec (no ROS)."""

from __future__ import annotations

import array
import struct

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cobot_hybrid_perception.media import load_image, sample_photo_path
from cobot_hybrid_ros import image_codec as codec
from cobot_hybrid_ros.errors import ImageCodecError, RosHelperError

ISSUE_ENCODINGS = ['bgr8', 'rgb8', 'bgra8', 'rgba8', 'mono8', 'mono16', '8UC1', '8UC2', '8UC3',
                   '8UC4', '16UC1', '32FC1']


def _random_pixels(rng: np.random.Generator, height: int, width: int,
                   encoding: str) -> np.ndarray:
    info = codec.encoding_info(encoding)
    shape = (height, width) if info.channels == 1 else (height, width, info.channels)
    if info.dtype.kind == 'f':
        return rng.standard_normal(shape).astype(info.dtype)
    limits = np.iinfo(info.dtype)
    return rng.integers(limits.min, limits.max, size=shape, endpoint=True, dtype=info.dtype)


def _padded(fields: codec.ImageFields, pad: int) -> tuple[bytes, int]:
    """Re-pack a buffer with ``pad`` junk bytes after every row."""
    rows = [fields.data[r * fields.step:(r + 1) * fields.step] + b'\xab' * pad
            for r in range(fields.height)]
    return b''.join(rows), fields.step + pad


@pytest.mark.parametrize('encoding', ISSUE_ENCODINGS)
def test_round_trip_each_encoding(encoding: str) -> None:
    rng = np.random.default_rng(1)
    pixels = _random_pixels(rng, 7, 5, encoding)
    fields = codec.image_fields(pixels, encoding)
    info = codec.encoding_info(encoding)
    assert fields.step == 5 * info.pixel_bytes
    assert len(fields.data) == fields.step * 7
    view = codec.image_view(fields.data, height=7, width=5, encoding=encoding,
                            step=fields.step, is_bigendian=fields.is_bigendian)
    np.testing.assert_array_equal(view, pixels)


def test_receive_path_is_a_zero_copy_view() -> None:
    pixels = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
    buffer = array.array('B', pixels.tobytes())  # what rclpy hands over for uint8[]
    view = codec.image_view(buffer, height=4, width=3, encoding='bgr8', step=9)
    assert np.shares_memory(view, np.frombuffer(buffer, np.uint8))
    buffer[0] = 200
    assert view[0, 0, 0] == 200


def test_row_padding_is_skipped_without_copy() -> None:
    pixels = np.arange(3 * 4, dtype=np.uint16).reshape(3, 4) * 1000
    data, step = _padded(codec.image_fields(pixels, 'mono16'), pad=6)
    view = codec.image_view(data, height=3, width=4, encoding='mono16', step=step)
    np.testing.assert_array_equal(view, pixels)
    assert view.strides == (step, 2)


def test_big_endian_data_reads_correctly_and_native_copy_swaps() -> None:
    values = np.array([[1, 258], [65535, 4096]], dtype=np.uint16)
    data = values.astype('>u2').tobytes()
    assert data[:4] == b'\x00\x01\x01\x02'
    view = codec.image_view(data, height=2, width=2, encoding='16UC1', step=4, is_bigendian=1)
    np.testing.assert_array_equal(view, values)
    native = codec.image_view(data, height=2, width=2, encoding='16UC1', step=4,
                              is_bigendian=True, native=True)
    assert native.dtype == np.dtype('=u2')
    np.testing.assert_array_equal(native, values)


def test_float_depth_big_endian() -> None:
    depth = np.array([[0.5, 1.25, np.nan]], dtype=np.float32)
    data = depth.astype('>f4').tobytes()
    view = codec.image_view(data, height=1, width=3, encoding='32FC1', step=12, is_bigendian=1)
    np.testing.assert_array_equal(view, depth)


def test_image_fields_records_big_endian_arrays() -> None:
    fields = codec.image_fields(np.zeros((2, 2), dtype='>u2'), 'mono16')
    assert fields.is_bigendian == 1
    assert codec.image_fields(np.zeros((2, 2), dtype='<u2'), 'mono16').is_bigendian == 0
    assert codec.image_fields(np.zeros((2, 2), dtype=np.uint8), 'mono8').is_bigendian == 0


def test_image_fields_accepts_non_contiguous_arrays() -> None:
    base = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    crop = base[1:5, 2:7]
    fields = codec.image_fields(crop, 'rgb8')
    view = codec.image_view(fields.data, height=4, width=5, encoding='rgb8', step=fields.step)
    np.testing.assert_array_equal(view, crop)


@pytest.mark.parametrize(('kwargs', 'needle'), [
    ({'encoding': 'yuv422_yuy2'}, 'unsupported image encoding'),
    ({'encoding': 'bayer_rggb8'}, 'unsupported image encoding'),
    ({'step': 5}, 'smaller than one row'),
    ({'data': b'\x00' * 17}, r'step\*height'),
    ({'data': b'\x00' * 19}, r'step\*height'),
    ({'height': 0, 'data': b''}, 'empty image'),
    ({'width': 0}, 'empty image'),
])
def test_malformed_messages_raise_one_clear_error(kwargs: dict, needle: str) -> None:
    args = {'data': b'\x00' * 18, 'height': 3, 'width': 2, 'encoding': 'bgr8', 'step': 6}
    args.update(kwargs)
    data = args.pop('data')
    with pytest.raises(ImageCodecError, match=needle) as info:
        codec.image_view(data, **args)
    assert isinstance(info.value, RosHelperError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(('pixels', 'encoding', 'needle'), [
    (np.zeros((2, 2, 3), np.uint8), 'mono8', 'does not fit encoding'),
    (np.zeros((2, 2), np.uint8), 'bgr8', 'does not fit encoding'),
    (np.zeros((2, 2, 3), np.float32), 'bgr8', 'dtype float32'),
    (np.zeros((0, 4, 3), np.uint8), 'bgr8', 'empty array'),
])
def test_bad_arrays_raise_clear_errors(pixels: np.ndarray, encoding: str, needle: str) -> None:
    with pytest.raises(ImageCodecError, match=needle):
        codec.image_fields(pixels, encoding)


def test_unsupported_encoding_error_lists_supported_ones() -> None:
    with pytest.raises(ImageCodecError) as info:
        codec.encoding_info('nv12')
    assert 'bgr8' in str(info.value) and '32FC1' in str(info.value)


def test_colour_conversions_on_a_real_photo() -> None:
    bgr = load_image(sample_photo_path('astronaut'), 'bgr8')
    rgb = codec.convert_color(bgr, 'bgr8', 'rgb8')
    np.testing.assert_array_equal(rgb, bgr[:, :, ::-1])
    np.testing.assert_array_equal(codec.convert_color(rgb, 'rgb8', 'bgr8'), bgr)
    mono = codec.convert_color(bgr, 'bgr8', 'mono8')
    b, g, r = (bgr[:, :, i].astype(np.float64) for i in range(3))
    expected = 0.299 * r + 0.587 * g + 0.114 * b  # ITU-R BT.601
    assert np.abs(mono.astype(np.float64) - expected).max() <= 1.0
    np.testing.assert_array_equal(codec.convert_color(rgb, 'rgb8', 'mono8'), mono)
    back = codec.convert_color(mono, 'mono8', 'bgr8')
    assert back.shape == bgr.shape and (back[:, :, 0] == mono).all()
    assert codec.convert_color(bgr, 'bgr8', 'bgr8') is bgr


def test_alpha_conversions() -> None:
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 200, 7
    rgb = codec.convert_color(bgra, 'bgra8', 'rgb8')
    assert rgb[0, 0].tolist() == [200, 0, 10]
    rgba = codec.convert_color(codec.convert_color(bgra, 'bgra8', 'bgr8'), 'bgr8', 'rgba8')
    assert rgba[0, 0].tolist() == [200, 0, 10, 255]


def test_sixteen_bit_colour_conversion_and_mismatched_depths() -> None:
    rgb16 = np.full((2, 3, 3), 1000, np.uint16)
    rgb16[..., 0] = 60000
    assert codec.convert_color(rgb16, 'rgb16', 'bgr16')[0, 0].tolist() == [1000, 1000, 60000]
    with pytest.raises(ImageCodecError, match='bit depth differs'):
        codec.convert_color(rgb16, 'rgb16', 'mono8')
    with pytest.raises(ImageCodecError, match='colour meaning'):
        codec.convert_color(np.zeros((2, 2), np.float32), '32FC1', 'mono8')


def test_jpeg_round_trip_of_a_real_photo_keeps_the_picture() -> None:
    rgb = load_image(sample_photo_path('coffee'), 'rgb8')
    payload, fmt = codec.encode_compressed(rgb, 'rgb8', 'jpeg', quality=95)
    assert fmt == 'rgb8; jpeg compressed bgr8' and payload[:3] == b'\xff\xd8\xff'
    decoded, encoding = codec.decode_compressed(payload, fmt)
    assert encoding == 'rgb8' and decoded.shape == rgb.shape
    assert np.abs(decoded.astype(int) - rgb.astype(int)).mean() < 3.0


@pytest.mark.parametrize('encoding', ['bgr8', 'rgb8', 'mono8', 'mono16', '16UC1', 'bgra8'])
def test_png_round_trip_is_lossless(encoding: str) -> None:
    pixels = _random_pixels(np.random.default_rng(3), 9, 11, encoding)
    payload, fmt = codec.encode_compressed(pixels, encoding, 'png')
    decoded, decoded_encoding = codec.decode_compressed(payload, fmt)
    assert decoded_encoding == encoding
    np.testing.assert_array_equal(decoded, pixels)


def test_bare_format_strings_decode_by_magic_bytes() -> None:
    pixels = _random_pixels(np.random.default_rng(4), 4, 4, 'bgr8')
    payload, _ = codec.encode_compressed(pixels, 'bgr8', 'png')
    decoded, encoding = codec.decode_compressed(payload, 'jpeg')  # lying format string
    assert encoding == 'bgr8'
    np.testing.assert_array_equal(decoded, pixels)


def test_compressed_depth_16uc1() -> None:
    depth = np.random.default_rng(5).integers(0, 8000, (6, 8), dtype=np.uint16)
    ok, png = cv2.imencode('.png', depth)
    assert ok
    payload = struct.pack('<iff', 0, 0.0, 0.0) + png.tobytes()
    decoded, encoding = codec.decode_compressed(payload, '16UC1; compressedDepth png')
    assert encoding == '16UC1'
    np.testing.assert_array_equal(decoded, depth)
    with pytest.raises(ImageCodecError, match='compressedDepth of 32FC1'):
        codec.decode_compressed(payload, '32FC1; compressedDepth png')


@pytest.mark.parametrize(('payload', 'needle'), [
    (b'', 'no data'),
    (b'GIF89a....', 'neither JPEG nor PNG'),
    (b'\xff\xd8\xff\xe0' + b'\x00' * 20, 'corrupt jpeg'),
    (b'\x89PNG\r\n\x1a\n' + b'\x00' * 20, 'corrupt png'),
])
def test_corrupt_compressed_payloads(payload: bytes, needle: str) -> None:
    with pytest.raises(ImageCodecError, match=needle):
        codec.decode_compressed(payload, 'jpeg')


def test_encode_refuses_what_the_codec_cannot_hold() -> None:
    with pytest.raises(ImageCodecError, match='8-bit pixels only'):
        codec.encode_compressed(np.zeros((2, 2), np.uint16), 'mono16', 'jpeg')
    with pytest.raises(ImageCodecError, match='cannot be stored'):
        codec.encode_compressed(np.zeros((2, 2), np.float32), '32FC1', 'png')
    with pytest.raises(ImageCodecError, match='unsupported compression'):
        codec.encode_compressed(np.zeros((2, 2), np.uint8), 'mono8', 'webp')


@st.composite
def _images(draw: st.DrawFn) -> tuple[np.ndarray, str, int, bool]:
    encoding = draw(st.sampled_from(sorted(codec.ENCODINGS)))
    height = draw(st.integers(1, 12))
    width = draw(st.integers(1, 12))
    pad = draw(st.integers(0, 9))
    bigendian = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = _random_pixels(np.random.default_rng(seed), height, width, encoding)
    return pixels, encoding, pad, bigendian


@settings(max_examples=300, deadline=None)
@given(_images())
def test_property_round_trip_any_encoding_padding_endianness(
        case: tuple[np.ndarray, str, int, bool]) -> None:
    pixels, encoding, pad, bigendian = case
    if bigendian:
        pixels = pixels.astype(pixels.dtype.newbyteorder('>'))
    fields = codec.image_fields(pixels, encoding)
    data, step = _padded(fields, pad)
    view = codec.image_view(data, height=fields.height, width=fields.width, encoding=encoding,
                            step=step, is_bigendian=fields.is_bigendian)
    np.testing.assert_array_equal(view, pixels)
    native = codec.image_view(data, height=fields.height, width=fields.width,
                              encoding=encoding, step=step, is_bigendian=fields.is_bigendian,
                              native=True)
    assert native.dtype.isnative
    np.testing.assert_array_equal(native, pixels)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(['bgr8', 'rgb8', 'bgra8', 'rgba8']),
       st.sampled_from(['bgr8', 'rgb8', 'bgra8', 'rgba8']), st.integers(0, 2**32 - 1))
def test_property_colour_order_round_trip(src: str, dst: str, seed: int) -> None:
    pixels = _random_pixels(np.random.default_rng(seed), 3, 4, src)
    there = codec.convert_color(pixels, src, dst)
    back = codec.convert_color(there, dst, src)
    src_c, dst_c = codec.ENCODINGS[src].channels, codec.ENCODINGS[dst].channels
    if src_c == 4 and dst_c == 3:
        np.testing.assert_array_equal(back[..., :3], pixels[..., :3])
        assert (back[..., 3] == 255).all()
    else:
        np.testing.assert_array_equal(back, pixels)
