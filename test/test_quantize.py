"""``cobot-hybrid quantize``: INT8 scored on held-out photos only, its calibration recorded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from cobot_hybrid_perception.backends.base import model_hash
from cobot_hybrid_perception.calibration_record import (
    MAX_RECORD_BYTES,
    CalibrationRecordError,
    file_sha256,
    pixels_sha256,
    read_record,
    record_path,
)
from cobot_hybrid_perception.detector import Detector, DetectorConfig
from cobot_hybrid_perception.media import load_image, sample_photo_path

PHOTOS = ('astronaut', 'bus', 'camera', 'coffee', 'zidane')  # sorted: zidane is the 5th


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', *args],
                          capture_output=True, text=True, timeout=300, check=False)


def _photos(folder: Path, names: tuple[str, ...]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f'{name}.png'
        cv2.imwrite(str(path), load_image(sample_photo_path(name), 'bgr8'))
        paths.append(path)
    return paths


@pytest.fixture(scope='module')
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model at 320, copied so that nothing is written into the model cache."""
    from cobot_hybrid_perception.models import resolve_model

    target = tmp_path_factory.mktemp('model') / 'pose-320.onnx'
    shutil.copyfile(resolve_model('default', 320), target)
    return target


def test_default_split_holds_out_every_fifth_image_and_records_the_rest(
        tmp_path: Path, fp32_model: Path) -> None:
    paths = _photos(tmp_path / 'calib', PHOTOS)
    output = tmp_path / 'int8.onnx'
    result = _cli('quantize', str(fp32_model), '--calib', str(tmp_path / 'calib'),
                  '--output', str(output), '--json')
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report['calibration_images'] == 4
    assert report['holdout_images'] == 1 and report['holdout_excluded'] == 0
    assert 'every 5th image' in report['holdout']
    assert report['agreement_boxes_fp32'] == 2  # zidane: two people
    assert 0.5 <= report['recall'] <= 1.0 and 0.5 <= report['mean_iou'] <= 1.0
    assert output.is_file() and report['int8_size_mb'] < report['fp32_size_mb']

    record = read_record(output)
    assert record is not None and report['calibration_record'] == str(record_path(output))
    assert record.int8_hash == model_hash(output) and record.fp32_hash == model_hash(fp32_model)
    calibrated = {p.name: p for p in paths[:4]}
    assert [image.name for image in record.calibration] == sorted(calibrated)
    for image in record.calibration:
        assert image.file_sha256 == file_sha256(calibrated[image.name])
        assert image.pixels_sha256 == pixels_sha256(load_image(calibrated[image.name]))
    assert [image.name for image in record.held_out] == ['zidane.png']
    assert record.agreement['holdout_images'] == 1

    detector = Detector(DetectorConfig(model=str(output), backend='ort-cpu', precision='int8'))
    try:
        assert detector.info.task == 'pose'  # metadata carried over
    finally:
        detector.close()


def test_holdout_images_are_scored_and_calibration_images_among_them_left_out(
        tmp_path: Path, fp32_model: Path) -> None:
    _photos(tmp_path / 'calib', ('astronaut', 'bus', 'camera'))
    _photos(tmp_path / 'holdout', ('coffee', 'zidane', 'bus'))  # bus: calibrated on
    output = tmp_path / 'int8.onnx'
    result = _cli('quantize', str(fp32_model), '--calib', str(tmp_path / 'calib'),
                  '--holdout', str(tmp_path / 'holdout'), '--output', str(output))
    assert result.returncode == 0, result.stderr
    assert 'calibrated on 3 images' in result.stdout
    assert 'on 2 held-out images' in result.stdout
    assert '1 calibration images among them left out' in result.stdout
    record = read_record(output)
    assert record is not None
    assert sorted(image.name for image in record.calibration) == \
        ['astronaut.png', 'bus.png', 'camera.png']
    assert sorted(image.name for image in record.held_out) == ['coffee.png', 'zidane.png']


def test_one_image_cannot_be_split_and_says_what_to_do(tmp_path: Path, fp32_model: Path
                                                       ) -> None:
    _photos(tmp_path / 'calib', ('bus',))
    result = _cli('quantize', str(fp32_model), '--calib', str(tmp_path / 'calib'),
                  '--output', str(tmp_path / 'int8.onnx'))
    assert result.returncode == 2
    assert 'cannot be split' in result.stderr and '--holdout' in result.stderr
    assert not (tmp_path / 'int8.onnx').exists()


def _record(**overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        'format': 'cobot_hybrid.int8-calibration/1', 'int8_model': 'm-int8.onnx',
        'int8_hash': '0123456789abcdef', 'fp32_model': 'm.onnx', 'fp32_hash': 'fedcba9876543210',
        'calibration': [{'name': 'a.png', 'pixels_sha256': 'a' * 64, 'file_sha256': 'b' * 64}],
        'held_out': [], 'agreement': {}}
    document.update(overrides)
    return document


def test_a_good_record_reads_back_and_a_missing_one_is_none(tmp_path: Path) -> None:
    model = tmp_path / 'm-int8.onnx'
    assert read_record(model) is None
    record_path(model).write_text(json.dumps(_record()))
    record = read_record(model)
    assert record is not None and record.calibration_pixels == frozenset({'a' * 64})


@pytest.mark.parametrize(('content', 'message'), [
    (b'{not json', 'not JSON'),
    (json.dumps(_record(format='other/1')).encode(), 'not a cobot_hybrid'),
    (json.dumps(_record(calibration=[{'name': 'a', 'pixels_sha256': 'XYZ'}])).encode(),
     'not a lowercase hex digest'),
    (json.dumps(_record(calibration={'a': 1})).encode(), 'must be a list'),
    (json.dumps(_record(int8_model=7)).encode(), 'must be a string'),
    (b' ' * (MAX_RECORD_BYTES + 1), 'over 8 MiB'),
    (b'{"format": "cobot_hybrid.int8-calibration/1", "agreement": {"a": '
     + b'[' * 100_000 + b']' * 100_000 + b'}}', r'is refused \(the file is nested deeper'),
    (b'{"format": "cobot_hybrid.int8-calibration/1", "agreement": {"a": 1' + b'0' * 5000
     + b'}}', r'is refused \(the file holds an integer of more than 4,300'),
    (b'{"format": "cobot_hybrid.int8-calibration/1", "agreement": {"recall": NaN}}',
     r'is refused \(NaN in the file'),
    (json.dumps(_record(agreement={'a': 'x' * 7_000_000})).encode(),
     r'is refused \(a string of 7000000 characters'),
    (json.dumps(_record(agreement={'recall': [1.0]})).encode(),
     'agreement.recall must be a number'),
    (json.dumps(_record(agreement={f'k{i}': 1 for i in range(33)})).encode(),
     'at most 32 fields'),
])
def test_a_bad_record_is_refused_with_the_reason(tmp_path: Path, content: bytes, message: str
                                                  ) -> None:
    model = tmp_path / 'm-int8.onnx'
    record_path(model).write_bytes(content)
    with pytest.raises(CalibrationRecordError, match=message):
        read_record(model)
