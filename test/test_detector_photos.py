"""The default pretrained model on real photos shipped in packages, through core and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cobot_hybrid_perception.detector import Detector, DetectorConfig
from cobot_hybrid_perception.errors import ConfigError, ImageConversionError, ModelLoadError
from cobot_hybrid_perception.media import load_image, sample_photo_path

PEOPLE = {'astronaut': 1, 'camera': 1, 'coffee': 0, 'bus': 4, 'zidane': 2}


@pytest.fixture(scope='module')
def detector() -> Detector:
    try:
        det = Detector(DetectorConfig(backend='ort-cpu', imgsz=640, threads=1))
    except ModelLoadError as exc:
        pytest.fail(f'{exc} (make setup exports the default model)')
    yield det
    det.close()


@pytest.mark.parametrize(('photo', 'people'), sorted(PEOPLE.items()))
def test_people_counted_on_real_photos(detector: Detector, photo: str, people: int) -> None:
    image = load_image(sample_photo_path(photo), 'bgr8')
    detections, times = detector.detect(image)
    assert [detections.class_name(i) for i in range(len(detections))] == ['person'] * people
    assert detections.keypoints is not None and detections.keypoints.shape == (people, 17, 3)
    h, w = image.shape[:2]
    assert (detections.boxes[:, [0, 2]] <= w).all() and (detections.boxes[:, [1, 3]] <= h).all()
    assert (detections.boxes[:, 2] > detections.boxes[:, 0]).all()
    assert times.infer_ms > 0 and times.preprocess_ms > 0


def test_keypoints_sit_inside_their_person(detector: Detector) -> None:
    detections, _ = detector.detect(load_image(sample_photo_path('zidane'), 'bgr8'))
    assert detections.keypoints is not None
    for box, points in zip(detections.boxes, detections.keypoints, strict=True):
        seen = points[points[:, 2] > 0.5]
        assert len(seen) >= 5
        margin = 0.05 * (box[3] - box[1])  # a joint may stick out of its box a little
        assert (seen[:, 0] >= box[0] - margin).all() and (seen[:, 0] <= box[2] + margin).all()
        assert (seen[:, 1] >= box[1] - margin).all() and (seen[:, 1] <= box[3] + margin).all()


def test_rgb_and_mono_input_give_the_same_people(detector: Detector) -> None:
    bgr = load_image(sample_photo_path('bus'), 'bgr8')
    from_bgr, _ = detector.detect(bgr)
    from_rgb, _ = detector.detect(np.ascontiguousarray(bgr[..., ::-1]), 'rgb8')
    np.testing.assert_allclose(from_rgb.boxes, from_bgr.boxes, atol=1e-3)
    mono, _ = detector.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 'mono8')
    assert len(mono) >= 3  # colour matters a little; the people are still there


def test_bad_images_are_errors_and_the_detector_keeps_working(detector: Detector) -> None:
    with pytest.raises(ImageConversionError, match='empty'):
        detector.detect(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ImageConversionError, match='8-bit'):
        detector.detect(np.zeros((10, 10), np.uint16), 'mono16')
    detections, _ = detector.detect(load_image(sample_photo_path('astronaut'), 'bgr8'))
    assert len(detections) == 1


def test_the_pt_checkpoint_through_pytorch_agrees_with_onnx(detector: Detector) -> None:
    pt = detector.model_path.with_name('yolo11n-pose.pt')
    torch_detector = Detector(DetectorConfig(model=str(pt), backend='ultralytics', imgsz=640))
    try:
        image = load_image(sample_photo_path('bus'), 'bgr8')
        onnx_dets, _ = detector.detect(image)
        torch_dets, _ = torch_detector.detect(image)
        assert torch_detector.backend.name == 'ultralytics-cpu'
        np.testing.assert_allclose(torch_dets.boxes, onnx_dets.boxes, atol=1.0)
        np.testing.assert_allclose(torch_dets.scores, onnx_dets.scores, atol=0.01)
    finally:
        torch_detector.close()


@pytest.mark.parametrize(('overrides', 'message'), [
    ({'backend': 'gpu'}, 'backend'), ({'precision': 'fp8'}, 'precision'),
    ({'imgsz': 100}, 'multiple of 32'), ({'conf': 1.5}, 'conf'),
    ({'task': 'segment'}, 'task'), ({'kpt_shape': (17,)}, 'kpt_shape'),
    ({'backend': 'tensorrt', 'precision': 'int8'}, 'calib_dir'),
])
def test_bad_detector_config_names_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DetectorConfig(**overrides)


def test_missing_model_file_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match='does not exist'):
        Detector(DetectorConfig(model='/nonexistent/model.onnx'))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', *args],
                          capture_output=True, text=True, timeout=300, check=False)


def test_cli_detect_json_on_real_photos(tmp_path: Path) -> None:
    paths = []
    for name in ('bus', 'zidane', 'coffee'):
        path = tmp_path / f'{name}.jpg'
        cv2.imwrite(str(path), load_image(sample_photo_path(name), 'bgr8'),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(str(path))
    result = _cli('detect', *paths, '--backend', 'ort-cpu', '--json')
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line['image'] for line in lines] == paths
    counts = [len(line['detections']) for line in lines]
    assert counts == [4, 2, 0]
    first = lines[0]['detections'][0]
    assert set(first) == {'class_name', 'score', 'bbox_xyxy', 'keypoints'}
    assert first['class_name'] == 'person' and len(first['bbox_xyxy']) == 4
    assert len(first['keypoints']) == 17 and len(first['keypoints'][0]) == 3


def test_cli_detect_reports_a_bad_image_and_goes_on(tmp_path: Path) -> None:
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'not a jpeg')
    good = tmp_path / 'astronaut.png'
    cv2.imwrite(str(good), load_image(sample_photo_path('astronaut'), 'bgr8'))
    result = _cli('detect', str(broken), str(good), '--backend', 'ort-cpu', '--json')
    assert result.returncode == 1
    assert 'broken.jpg' in result.stderr
    assert len(json.loads(result.stdout.strip())['detections']) == 1


def test_cli_unknown_model_exits_2_with_the_reason() -> None:
    result = _cli('detect', 'x.jpg', '--model', '/nope/model.onnx')
    assert result.returncode == 2 and 'does not exist' in result.stderr


def test_cli_export_writes_onnx_and_explains_a_missing_tensorrt(tmp_path: Path) -> None:
    from cobot_hybrid_perception.backends.tensorrt_backend import tensorrt_status
    from cobot_hybrid_perception.models import model_cache_dir

    pt = tmp_path / 'pose.pt'
    pt.write_bytes((model_cache_dir() / 'yolo11n-pose.pt').read_bytes())
    result = _cli('export', str(pt), '--imgsz', '256')
    assert result.returncode == 0, result.stderr
    exported = tmp_path / 'pose-256.onnx'
    assert result.stdout.strip().splitlines()[-1] == str(exported)
    detector = Detector(DetectorConfig(model=str(exported), backend='ort-cpu'))
    try:
        assert detector.info.imgsz == (256, 256) and detector.info.task == 'pose'
    finally:
        detector.close()
    if tensorrt_status() is not None:
        engine = _cli('export', str(pt), '--imgsz', '256', '--engine')
        assert engine.returncode == 2 and 'TensorRT cannot run here' in engine.stderr
    bad = _cli('export', str(exported))
    assert bad.returncode == 2 and '.pt checkpoint' in bad.stderr
