"""The snapshot job: the real model on real photos, the edge comparison, the similarity index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cobot_hybrid_perception.detector import Detector, DetectorConfig
from cobot_hybrid_perception.errors import ModelLoadError
from cobot_hybrid_perception.media import load_image, sample_photo_path
from cobot_hybrid_perception.models import resolve_model
from cobot_hybrid_perception.snapshot_analysis import (
    AnalysisConfig,
    SnapshotJob,
    augment,
    edge_people,
    embedding_model,
    make_job,
)
from cobot_hybrid_planner.offload.similarity import IncidentIndex, SimilarityError
from cobot_hybrid_protocol.envelope import build_envelope
from cobot_hybrid_protocol.offload import JobInputError, Upload
from cobot_hybrid_protocol.snapshot import SNAPSHOT_TYPE, build_snapshot

T0 = 1_795_790_000.0


def detection_dicts(boxes: list[list[float]], cls: str = 'person') -> dict[str, Any]:
    """A vision_msgs/Detection2DArray as the bridge's codec writes it."""
    return {'header': {'frame_id': 'cam'}, 'detections': [
        {'bbox': {'center': {'position': {'x': (b[0] + b[2]) / 2, 'y': (b[1] + b[3]) / 2},
                             'theta': 0.0}, 'size_x': b[2] - b[0], 'size_y': b[3] - b[1]},
         'results': [{'hypothesis': {'class_id': cls, 'score': 0.8}}], 'id': ''}
        for b in boxes]}


def upload(image: np.ndarray, edge: list[list[float]] | None, robot: str = 'cobot-1',
           seq: int = 1, **image_over: Any) -> Upload:
    ok, jpeg = cv2.imencode('.jpg', image)
    assert ok
    data = {'image': {'width': image.shape[1], 'height': image.shape[0], 'frame_id': 'cam',
                      'stamp': T0, 'bytes': len(jpeg), **image_over},
            'trigger': {'topic': 'protective_stop', 'field': 'data', 'value': True,
                        'stamp': T0},
            'context': {} if edge is None else {'detections': {
                'stamp': T0 - 0.05, 'data': detection_dicts(edge)}}}
    payload = build_snapshot(build_envelope(robot, seq, T0, 'image', SNAPSHOT_TYPE, data),
                             jpeg.tobytes())
    return Upload(robot, seq, 'events/stop_snapshot', payload, T0 + 1)


@pytest.fixture(scope='module')
def job() -> SnapshotJob:
    made = make_job({})       # the defaults: 640 and 1280, mirrored
    assert isinstance(made, SnapshotJob)
    return made


@pytest.fixture(scope='module')
def edge_boxes() -> dict[str, list[list[float]]]:
    """What the edge detector (YOLO11n-pose at 320) sees on each photo."""
    detector = Detector(DetectorConfig(imgsz=320, backend='ort-cpu', conf=0.5))
    out = {}
    for name in ('bus', 'zidane', 'astronaut'):
        found, _ = detector.detect(load_image(sample_photo_path(name)))
        out[name] = found.boxes.astype(float).tolist()
    detector.close()
    return out


def test_the_cloud_agrees_with_an_edge_that_saw_everyone(
        job: SnapshotJob, edge_boxes: dict[str, list[list[float]]]) -> None:
    result = job(upload(load_image(sample_photo_path('zidane')), edge_boxes['zidane']))
    assert result['verdict'] == 'agree', result
    assert result['cloud_people'] == len(edge_boxes['zidane']) == 2
    assert result['passes'] == 4 and result['sizes'] == [640, 1280]
    assert result['edge_context'] and result['edge_context_age_s'] == pytest.approx(0.05)
    assert result['trigger']['topic'] == 'protective_stop'
    assert len(result['embedding']) == 256
    assert np.linalg.norm(result['embedding']) == pytest.approx(1.0, abs=1e-3)


def test_people_the_edge_did_not_report_are_missed_ones(
        job: SnapshotJob, edge_boxes: dict[str, list[list[float]]]) -> None:
    image = load_image(sample_photo_path('bus'))
    seen = edge_boxes['bus']
    result = job(upload(image, seen[:1]))            # the edge reported one of the people
    assert result['verdict'] == 'edge_missed_people'
    assert len(result['missed']) == result['cloud_people'] - 1 >= 2
    alone = job(upload(image, None))             # no detections of the robot's: no verdict
    assert alone['edge_context'] is False and alone['verdict'] == 'no_edge_context'
    assert alone['missed'] == [] and alone['cloud_people'] >= 3


def test_an_edge_person_where_the_cloud_sees_nobody_is_a_false_alarm(job: SnapshotJob) -> None:
    image = load_image(sample_photo_path('coffee'))  # a cup of coffee: nobody
    result = job(upload(image, [[10.0, 10.0, 120.0, 200.0]]))
    assert result['verdict'] == 'edge_false_alarm' and result['cloud_people'] == 0
    assert result['false_alarms'] == [[10.0, 10.0, 120.0, 200.0]]


@pytest.mark.parametrize(('change', 'text'), [
    ({'bytes': 10}, 'cut or padded'),
    ({'width': 999}, 'header says 999x'),
    ({'stamp': float('inf')}, 'not valid JSON|non_finite|Infinity'),
])
def test_a_snapshot_that_is_not_what_it_says_is_a_job_input_error(
        job: SnapshotJob, change: dict[str, Any], text: str) -> None:
    image = load_image(sample_photo_path('coffee'))
    try:
        bad = upload(image, None, **change)
    except ValueError:          # the builder itself refuses a non-finite stamp
        return
    with pytest.raises(JobInputError, match=text):
        job(bad)


def test_garbage_after_a_valid_header_is_refused(job: SnapshotJob) -> None:
    good = upload(load_image(sample_photo_path('coffee')), None)
    header, _, jpeg = good.payload.partition(b'\n')
    noise = b'\xff\xd8\xff' + bytes(len(jpeg) - 3)
    with pytest.raises(JobInputError, match='not a JPEG'):
        job(Upload('cobot-1', 1, good.kind, header + b'\n' + noise, T0))
    with pytest.raises(JobInputError, match="says robot 'cobot-1'"):
        job(Upload('cobot-2', 1, good.kind, good.payload, T0))
    with pytest.raises(JobInputError, match='no_header|header'):
        job(Upload('cobot-1', 1, good.kind, jpeg, T0))   # a bare JPEG (an older bridge)


def test_a_huge_image_is_refused_before_it_is_decoded() -> None:
    small = make_job({'sizes': '320', 'tta': 'false', 'max_pixels': '100000'})
    image = np.zeros((600, 800, 3), np.uint8)
    with pytest.raises(JobInputError, match='more than max_pixels'):
        small(upload(image, None))


def test_the_planted_near_duplicate_is_the_nearest_past_incident(job: SnapshotJob,
                                                                   tmp_path: Path) -> None:
    index = IncidentIndex(tmp_path / 'vectors.db', 256, 'HNSW32')
    names = ('astronaut', 'camera', 'coffee', 'bus', 'zidane')
    for n, name in enumerate(names):
        for suffix, vector in job.embed(sample_photo_path(name).read_bytes(), 6, seed=n):
            index.add('reference', n * 10 + (int(suffix[1:]) if suffix else 0), name + suffix,
                      vector)
    assert len(index) == 35
    rng = np.random.default_rng(1234)              # a new near-duplicate of the bus photo
    planted = augment(load_image(sample_photo_path('bus')), rng)
    result = job(upload(planted, None))
    (first, *_) = index.search(result['embedding'], k=5)
    assert first.label.split('~')[0] == 'bus', first
    assert first.similarity > 0.9
    others = [n for n in index.search(result['embedding'], k=35) if not n.label.startswith('bus')]
    assert max(n.similarity for n in others) < first.similarity
    with pytest.raises(SimilarityError):
        index.add('x', 1, 'bad', [0.0] * 255)
    index.close()


def test_a_model_without_the_embedding_layer_says_which_to_set(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match='embed_layer'):
        embedding_model(resolve_model('default', 320), '/no/such/tensor', tmp_path)


@pytest.mark.parametrize('context', [
    {}, {'detections': 'x'}, {'detections': [1, None, {}]},
    {'detections': [{'results': [{'hypothesis': {'class_id': 'person'}}],
                     'bbox': {'center': {'position': {'x': float('nan'), 'y': 1}},
                              'size_x': 1, 'size_y': 1}}]},
    {'detections': [{'results': [{'hypothesis': {'class_id': 'person'}}],
                     'bbox': {'center': {'position': {'x': 1, 'y': 1}},
                              'size_x': -5, 'size_y': 1}}]},
])
def test_malformed_edge_detections_are_skipped(context: dict[str, Any]) -> None:
    assert edge_people(context) == []


def test_an_unknown_option_is_named() -> None:
    from cobot_hybrid_perception.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown option 'size'"):
        make_job({'size': '640'})
    with pytest.raises(ConfigError, match='tta'):
        AnalysisConfig(tta='yes')   # type: ignore[arg-type]



def test_a_read_only_model_cache_gets_the_embedding_model_written_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil

    from cobot_hybrid_perception import snapshot_analysis

    cache = tmp_path / 'image_models'
    cache.mkdir()
    source = cache / 'm.onnx'
    shutil.copy(resolve_model('default', 320), source)
    real_access = os.access
    # an image's read-only model folder (root writes anywhere, so the check is what is faked)
    monkeypatch.setattr(snapshot_analysis.os, 'access', lambda path, mode: False if Path(
        path) in (cache, tmp_path) else real_access(path, mode))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    made = embedding_model(source, '/model.10/cv2/act/Mul_output_0', cache)
    assert made.parent == tmp_path / 'xdg' / 'cobot_hybrid' / 'models' and made.is_file()
    assert not list(cache.glob('*embed*'))
    assert embedding_model(source, '/model.10/cv2/act/Mul_output_0', cache) == made


def test_threads_sharing_the_job_get_the_same_answers_as_one(job: SnapshotJob) -> None:
    from concurrent.futures import ThreadPoolExecutor

    uploads = [upload(load_image(sample_photo_path(n)), []) for n in ('zidane', 'bus') * 4]
    alone = [job(u)['detections'] for u in uploads[:2]]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda u: job(u)['detections'], uploads))
    assert together == alone * 4
