"""Letterbox, NMS, YOLO output decoding and model metadata against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from cobot_hybrid_perception.errors import ImageConversionError, ModelLoadError, ModelOutputError
from cobot_hybrid_perception.letterbox import Letterbox, LetterboxTransform
from cobot_hybrid_perception.model_info import ModelInfo
from cobot_hybrid_perception.yolo_decode import Detections, batched_nms, decode, nms

DETECT2 = ModelInfo(imgsz=(64, 64), names=('person', 'cup'))
POSE = ModelInfo(imgsz=(64, 64), names=('person',), task='pose', kpt_shape=(2, 3))
IDENTITY = LetterboxTransform(scale=1.0, pad_x=0.0, pad_y=0.0, width=64, height=64)


# --- letterbox --------------------------------------------------------------------------------

@pytest.mark.parametrize(('hw', 'scale', 'pad'), [
    ((480, 640), 1.0, (0.0, 80.0)),     # landscape: bands top and bottom
    ((640, 320), 1.0, (160.0, 0.0)),    # portrait: bands left and right
    ((300, 500), 1.28, (0.0, 128.0)),   # 500 -> 640, 300 -> 384, (640 - 384) / 2 = 128
    ((1280, 1280), 0.5, (0.0, 0.0)),
])
def test_letterbox_scale_and_padding(hw: tuple[int, int], scale: float,
                                     pad: tuple[float, float]) -> None:
    letterbox = Letterbox(640, 640)
    t = letterbox(np.zeros((*hw, 3), np.uint8))
    assert (t.scale, t.pad_x, t.pad_y) == pytest.approx((scale, *pad))
    assert (t.height, t.width) == hw


def test_letterbox_writes_rgb_in_unit_range_and_grey_border() -> None:
    letterbox = Letterbox(64, 64)
    blue_bgr = np.zeros((32, 64, 3), np.uint8)
    blue_bgr[..., 0] = 255
    buffer = letterbox.tensor
    letterbox(blue_bgr, 'bgr8')
    assert letterbox.tensor is buffer  # the same preallocated buffer every frame
    r, g, b = buffer[0, :, 32, 32]
    assert (r, g, b) == pytest.approx((0.0, 0.0, 1.0))
    assert buffer[0, :, 0, 0] == pytest.approx([114 / 255] * 3)  # border row
    letterbox(blue_bgr[..., ::-1].copy(), 'rgb8')  # the same colour given as RGB
    assert buffer[0, :, 32, 32] == pytest.approx((0.0, 0.0, 1.0))


def test_letterbox_repaints_the_border_when_the_size_changes() -> None:
    letterbox = Letterbox(64, 64)
    letterbox(np.full((64, 64, 3), 255, np.uint8))
    letterbox(np.zeros((32, 64, 3), np.uint8))
    assert letterbox.tensor[0, 0, 0, 0] == pytest.approx(114 / 255)


def test_letterbox_accepts_mono_and_rejects_other_input() -> None:
    letterbox = Letterbox(64, 64)
    letterbox(np.full((10, 10), 200, np.uint8), 'mono8')
    assert letterbox.tensor[0, :, 32, 32] == pytest.approx([200 / 255] * 3)
    with pytest.raises(ImageConversionError, match='8-bit'):
        letterbox(np.zeros((10, 10), np.uint16), 'mono16')
    with pytest.raises(ImageConversionError, match='empty'):
        letterbox(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ImageConversionError, match='bgr8, rgb8 or mono8'):
        letterbox(np.zeros((10, 10, 4), np.uint8), 'bgra8')


def test_to_original_inverts_the_letterbox() -> None:
    t = LetterboxTransform(scale=1.28, pad_x=0.0, pad_y=128.0, width=500, height=300)
    xy = np.array([[128.0, 256.0, 640.0, 512.0]])   # network pixels
    Letterbox.to_original(xy, t)
    np.testing.assert_allclose(xy, [[100.0, 100.0, 500.0, 300.0]])
    outside = np.array([[-50.0, 0.0, 700.0, 700.0]])
    Letterbox.to_original(outside, t)
    np.testing.assert_allclose(outside, [[0.0, 0.0, 500.0, 300.0]])  # clipped to the image


# --- NMS --------------------------------------------------------------------------------------

def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.8, 0.9, 0.7], np.float32)
    # IoU(0, 1) = 90 / 110 = 0.82 > 0.45: box 0 goes; box 2 does not overlap.
    assert nms(boxes, scores, 0.45).tolist() == [1, 2]
    assert nms(boxes, scores, 0.9).tolist() == [1, 0, 2]  # 0.82 <= 0.9: both stay


def test_nms_is_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert batched_nms(boxes, scores, np.array([0, 0]), 0.5).tolist() == [0]
    assert batched_nms(boxes, scores, np.array([0, 1]), 0.5).tolist() == [0, 1]
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).tolist() == []


# --- decode -----------------------------------------------------------------------------------

def _channels_first(rows: list[list[float]]) -> np.ndarray:
    """Build a [1, C, N] output from N rows of C values."""
    return np.array(rows, np.float32).T[None]


def test_decode_detection_filters_suppresses_and_maps_back() -> None:
    out = _channels_first([
        [20, 20, 10, 10, 0.9, 0.1],    # person at (15..25)
        [21, 20, 10, 10, 0.8, 0.1],    # duplicate of it: suppressed
        [20, 20, 10, 10, 0.1, 0.7],    # a cup at the same place: kept (other class)
        [50, 50, 4, 4, 0.2, 0.1],      # below conf
    ])
    t = LetterboxTransform(scale=2.0, pad_x=4.0, pad_y=0.0, width=30, height=32)
    dets = decode([out], DETECT2, t, conf=0.25, iou=0.45)
    assert [dets.class_name(i) for i in range(len(dets))] == ['person', 'cup']
    assert dets.scores.tolist() == pytest.approx([0.9, 0.7])
    # (15 - 4) / 2 = 5.5, 15 / 2 = 7.5, (25 - 4) / 2 = 10.5, 25 / 2 = 12.5
    assert dets.boxes[0].tolist() == pytest.approx([5.5, 7.5, 10.5, 12.5])
    assert dets.keypoints is None


def test_decode_pose_maps_keypoints_back() -> None:
    out = _channels_first([[32, 32, 20, 40, 0.95, 30, 20, 0.9, 34, 50, 0.2]])
    t = LetterboxTransform(scale=0.5, pad_x=0.0, pad_y=8.0, width=128, height=96)
    dets = decode([out], POSE, t)
    assert dets.keypoints is not None and dets.keypoints.shape == (1, 2, 3)
    np.testing.assert_allclose(dets.keypoints[0], [[60, 24, 0.9], [68, 84, 0.2]], rtol=1e-6)
    assert dets.boxes[0].tolist() == pytest.approx([44, 8, 84, 88])


def test_decode_end_to_end_output_needs_no_nms() -> None:
    info = ModelInfo(imgsz=(64, 64), names=('person', 'cup'), end2end=True)
    out = np.array([[[0, 0, 10, 10, 0.6, 1], [0, 0, 10, 10, 0.9, 0], [5, 5, 6, 6, 0.1, 0]]],
                   np.float32)
    dets = decode([out], info, IDENTITY)
    assert dets.scores.tolist() == pytest.approx([0.9, 0.6])  # overlapping boxes both stay
    assert dets.class_ids.tolist() == [0, 1]


def test_decode_recognises_end_to_end_without_metadata() -> None:
    out = np.zeros((1, 300, 6), np.float32)
    out[0, 0] = [1, 2, 3, 4, 0.9, 1]
    dets = decode([out], DETECT2, IDENTITY)
    assert dets.boxes[0].tolist() == pytest.approx([1, 2, 3, 4])


def test_decode_transposed_layout() -> None:
    rows = [[20, 20, 10, 10, 0.9, 0.1]]
    first = decode([_channels_first(rows)], DETECT2, IDENTITY)
    last = decode([np.transpose(_channels_first(rows), (0, 2, 1)).copy()], DETECT2, IDENTITY)
    assert last.boxes.tolist() == first.boxes.tolist()


def test_decode_unknown_shape_names_what_it_saw() -> None:
    with pytest.raises(ModelOutputError, match=r'\[1, 7, 100\].*\[1, 6, N\]'):
        decode([np.zeros((1, 7, 100), np.float32)], DETECT2, IDENTITY)
    with pytest.raises(ModelOutputError, match='no outputs'):
        decode([], DETECT2, IDENTITY)


def test_decode_refuses_nan_scores() -> None:
    out = _channels_first([[20, 20, 10, 10, np.nan, 0.1]])
    with pytest.raises(ModelOutputError, match='NaN'):
        decode([out], DETECT2, IDENTITY)


def test_detections_to_dicts_is_json_ready() -> None:
    out = _channels_first([[32, 32, 20, 40, 0.95, 30, 20, 0.9, 34, 50, 0.2]])
    record = decode([out], POSE, IDENTITY).to_dicts()[0]
    assert record['class_name'] == 'person'
    assert record['bbox_xyxy'] == [22.0, 12.0, 42.0, 52.0]
    assert record['keypoints'] == [[30.0, 20.0, 0.9], [34.0, 50.0, 0.2]]
    assert len(Detections.empty(POSE)) == 0


# --- model metadata ---------------------------------------------------------------------------

ULTRALYTICS_META = {'imgsz': '[640, 640]', 'names': "{0: 'person'}", 'task': 'pose',
                    'kpt_shape': '[17, 3]', 'stride': '32', 'end2end': 'False'}


def test_model_info_from_ultralytics_metadata() -> None:
    info = ModelInfo.from_metadata(ULTRALYTICS_META, (640, 640))
    assert (info.imgsz, info.names, info.task, info.kpt_shape) == \
        ((640, 640), ('person',), 'pose', (17, 3))
    assert info.keypoint_values == 51


def test_config_overrides_metadata_and_supplies_what_is_missing() -> None:
    info = ModelInfo.from_metadata({}, (320, 320), {'class_names': ['a', 'b']})
    assert (info.imgsz, info.names, info.task) == ((320, 320), ('a', 'b'), 'detect')
    renamed = ModelInfo.from_metadata(ULTRALYTICS_META, (640, 640), {'class_names': ['human']})
    assert renamed.names == ('human',)


@pytest.mark.parametrize(('meta', 'hw', 'overrides', 'message'), [
    ({}, (640, 640), {}, 'no class names'),
    ({'names': "{0: 'x'}"}, (None, None), {}, 'dynamic input size'),
    (ULTRALYTICS_META, (320, 320), {}, 'does not match the model input'),
    ({'names': "{0: 'x'}", 'task': 'segment'}, (64, 64), {}, 'not supported'),
    ({'names': "{0: 'x'}", 'task': 'pose'}, (64, 64), {}, 'kpt_shape'),
    ({'names': '{0: '}, (64, 64), {}, 'unreadable model metadata'),
    ({'names': "{0: 'x'}"}, (100, 100), {}, 'multiple of the stride'),
])
def test_bad_model_metadata_is_a_clear_error(meta: dict, hw: tuple, overrides: dict,
                                             message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        ModelInfo.from_metadata(meta, hw, overrides)


@pytest.mark.parametrize(('key', 'text', 'message'), [
    ('stride', '0', "stride='0' is not an integer 1 to"),
    ('stride', 'x', "stride='x' is not an integer"),
    ('stride', '1' + '0' * 5000, "stride='1000"),
    ('kpt_shape', '[17]', 'kpt_shape [17] is not 2 integers'),
    ('kpt_shape', '[1000000000, 3]', 'kpt_shape [1000000000, 3] is not 2 integers 1 to 1000'),
    ('kpt_shape', '[17, True]', 'kpt_shape [17, True]'),
    ('kpt_shape', "'ab'", "kpt_shape 'ab' is not 2 integers"),
    ('names', "{0: 'person', 'a': 'b'}", "names {0: 'person', 'a': 'b'}: the keys must be"),
    ('names', "{0: 'person', 2: 'b'}", 'the keys must be the class indices'),
    ('names', "'person'", "names 'person' is not a list of class names"),
    ('names', '[None]', 'names [None] is not a list'),
    ('names', '(' * 50_000 + ')' * 50_000, "unreadable model metadata names='(((("),
    ('names', '[' * 100 + ']' * 100, 'is not a list of class names'),
    ('names', '[' * 5000 + ']' * 5000, 'unreadable model metadata names='),
    ('names', 'x' * (2 << 20), 'not a string of at most'),
    ('imgsz', "'ab'", "imgsz 'ab' is not 2 integers"),
    ('imgsz', '[64, 0]', 'imgsz [64, 0] is not 2 integers'),
    ('imgsz', '[64, 64, 3]', 'imgsz [64, 64, 3]'),
    ('imgsz', '__import__("os")', 'unreadable model metadata imgsz='),
])
def test_loose_metadata_is_a_load_error_naming_key_and_value(key: str, text: str,
                                                             message: str) -> None:
    meta = {'names': "{0: 'person'}", 'task': 'pose', 'kpt_shape': '[17, 3]', 'stride': '32',
            key: text}
    with pytest.raises(ModelLoadError) as caught:
        ModelInfo.from_metadata(meta, (64, 64))
    assert message in str(caught.value) and len(str(caught.value)) < 300, caught.value


def _reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """The textbook greedy loop, to hold OpenCV's NMSBoxes to."""
    order = list(np.argsort(-scores, kind='stable'))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        rest = []
        for j in order:
            w = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            h = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = w * h
            union = ((boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
                     + (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1]) - inter)
            if inter / union <= threshold:
                rest.append(j)
        order = rest
    return keep


@pytest.mark.parametrize('seed', range(20))
def test_nms_matches_the_textbook_greedy_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(5, 120, (n, 2))
    boxes = np.c_[xy, xy + wh].astype(np.float32)
    scores = rng.uniform(0.25, 1.0, n).astype(np.float32)
    for threshold in (0.3, 0.45, 0.7):
        assert nms(boxes, scores, threshold).tolist() == _reference_nms(boxes, scores,
                                                                        threshold)
