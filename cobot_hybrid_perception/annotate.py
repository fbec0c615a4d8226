"""Draw detections (boxes, labels, COCO skeleton) on a copy of an image, for rviz."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.yolo_decode import Detections
from cobot_hybrid_ros.image_codec import convert_color

__all__ = ['draw_detections']

# COCO-17 limbs (pairs of keypoint indices).
SKELETON = ((5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (5, 11), (6, 12), (11, 12), (11, 13),
            (13, 15), (12, 14), (14, 16), (0, 1), (0, 2), (1, 3), (2, 4))


def draw_detections(image: npt.NDArray[Any], encoding: str, detections: Detections,
                    keypoint_conf: float = 0.5) -> npt.NDArray[np.uint8]:
    """Return a ``bgr8`` copy of ``image`` with the detections drawn on it."""
    canvas: npt.NDArray[np.uint8] = np.array(convert_color(image, encoding, 'bgr8'),
                                            dtype=np.uint8, copy=True)
    for i in range(len(detections)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in detections.boxes[i])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (40, 220, 60), 2)
        label = f'{detections.class_name(i)} {float(detections.scores[i]):.2f}'
        cv2.putText(canvas, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (40, 220, 60), 1, cv2.LINE_AA)
        if detections.keypoints is None or detections.keypoints.shape[1] != 17:
            continue
        points = detections.keypoints[i]
        for a, b in SKELETON:
            if points[a, 2] >= keypoint_conf and points[b, 2] >= keypoint_conf:
                cv2.line(canvas, (int(points[a, 0]), int(points[a, 1])),
                         (int(points[b, 0]), int(points[b, 1])), (255, 160, 0), 2)
    return canvas
