"""Parity of a backend with ONNX Runtime on the sample photos (the OpenVINO and LiteRT tests)."""

from __future__ import annotations

import numpy as np

from cobot_hybrid_perception.detector import Detector
from cobot_hybrid_perception.media import SAMPLE_PHOTOS, load_image, sample_photo_path

Result = dict[str, tuple[np.ndarray, ...]]


def detect_all(detector: Detector) -> Result:
    """Boxes, keypoints, scores and class ids of every sample photo, by photo name."""
    out = {}
    for name in sorted(SAMPLE_PHOTOS):
        dets, _ = detector.detect(load_image(sample_photo_path(name), 'bgr8'))
        assert dets.keypoints is not None
        out[name] = (dets.boxes.copy(), dets.keypoints.copy(), dets.scores.copy(),
                     dets.class_ids.copy())
    return out


def assert_same_detections(got: Result, ref: Result, pixel_tol: float, score_tol: float
                           ) -> None:
    """The same people in every photo, boxes and keypoints within ``pixel_tol`` px."""
    assert len(ref['bus'][0]) >= 3 and len(ref['zidane'][0]) == 2    # people to compare
    for name, (boxes, kpts, scores, classes) in ref.items():
        assert len(got[name][0]) == len(boxes), name
        np.testing.assert_array_equal(got[name][3], classes)
        np.testing.assert_allclose(got[name][0], boxes, rtol=0, atol=pixel_tol)
        np.testing.assert_allclose(got[name][1][..., :2], kpts[..., :2], rtol=0,
                                   atol=pixel_tol)
        np.testing.assert_allclose(got[name][2], scores, rtol=0, atol=score_tol)
