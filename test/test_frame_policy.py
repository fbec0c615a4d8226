"""Which frame encodings the detector infers as they are, converts to bgr8 or refuses."""

from __future__ import annotations

import numpy as np
import pytest

from cobot_hybrid_perception.errors import PerceptionError
from cobot_hybrid_perception.frame_policy import (
    CONVERTED_TO,
    depth_scale_m,
    for_inference,
    frame_action,
)
from cobot_hybrid_ros.errors import ImageCodecError
from cobot_hybrid_ros.image_codec import ENCODINGS


def _pixels(encoding: str) -> np.ndarray:
    info = ENCODINGS[encoding]
    shape = (2, 3) if info.channels == 1 else (2, 3, info.channels)
    return np.arange(np.prod(shape), dtype=info.dtype).reshape(shape)


@pytest.mark.parametrize(('encoding', 'action'), [
    ('bgr8', 'infer'), ('rgb8', 'infer'), ('mono8', 'infer'),
    ('bgra8', 'convert'), ('rgba8', 'convert'),
    ('bgr16', 'refuse'), ('rgb16', 'refuse'), ('rgba16', 'refuse'), ('mono16', 'refuse'),
    ('8UC3', 'refuse'), ('8UC1', 'refuse'), ('16UC1', 'refuse'), ('32FC1', 'refuse'),
    ('bayer_rggb8', 'refuse'), ('yuv422', 'refuse'), ('', 'refuse'), ('BGR8', 'refuse'),
])
def test_each_encoding_has_its_action(encoding: str, action: str) -> None:
    assert frame_action(encoding) == action


@pytest.mark.parametrize('encoding', ['bgr8', 'rgb8', 'mono8'])
def test_inference_encodings_pass_through_without_a_copy(encoding: str) -> None:
    pixels = _pixels(encoding)
    out, out_encoding = for_inference(pixels, encoding)
    assert out is pixels and out_encoding == encoding


@pytest.mark.parametrize(('encoding', 'bgr_of_first_pixel'), [
    ('bgra8', [0, 1, 2]),    # b, g, r, a -> b, g, r
    ('rgba8', [2, 1, 0]),    # r, g, b, a -> b, g, r
])
def test_other_8bit_colour_becomes_bgr8(encoding: str, bgr_of_first_pixel: list[int]) -> None:
    out, out_encoding = for_inference(_pixels(encoding), encoding)
    assert out_encoding == CONVERTED_TO == 'bgr8'
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == bgr_of_first_pixel


@pytest.mark.parametrize(('encoding', 'why'), [
    ('32FC1', 'colour meaning'), ('16UC1', 'colour meaning'), ('8UC3', 'colour meaning'),
    ('rgb16', 'bit depth'), ('mono16', 'bit depth'),
])
def test_refused_encodings_raise_with_the_codec_reason(encoding: str, why: str) -> None:
    with pytest.raises(ImageCodecError, match=why) as caught:
        for_inference(_pixels(encoding), encoding)
    assert encoding in str(caught.value)   # the node's diagnostics message names it


def test_an_unknown_encoding_is_refused() -> None:
    with pytest.raises(ImageCodecError, match='unsupported image encoding'):
        for_inference(np.zeros((2, 3, 3), np.uint8), 'yuv422')


@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
def test_the_action_says_what_for_inference_does(encoding: str) -> None:
    pixels = _pixels(encoding)
    action = frame_action(encoding)
    if action == 'refuse':
        with pytest.raises(ImageCodecError):
            for_inference(pixels, encoding)
        return
    out, out_encoding = for_inference(pixels, encoding)
    assert (out is pixels) == (action == 'infer')
    assert out_encoding == (encoding if action == 'infer' else 'bgr8')


@pytest.mark.parametrize(('encoding', 'metres_per_unit'), [
    ('16UC1', 1e-3), ('mono16', 1e-3), ('32FC1', 1.0)])
def test_depth_units(encoding: str, metres_per_unit: float) -> None:
    assert depth_scale_m(encoding) == metres_per_unit


@pytest.mark.parametrize('encoding', ['32FC3', '16SC1', '64FC1', 'mono8', 'bgr8', ''])
def test_other_depth_encodings_are_refused(encoding: str) -> None:
    with pytest.raises(PerceptionError, match='publish 16UC1 .mm. or 32FC1 .m.') as caught:
        depth_scale_m(encoding)
    assert repr(encoding) in str(caught.value)
