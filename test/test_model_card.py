"""The model card: validation, its file, its JSON Schema, a card measured on real photos."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from cobot_hybrid_cli import main
from cobot_hybrid_perception.detector import DetectorConfig
from cobot_hybrid_perception.errors import ConfigError
from cobot_hybrid_perception.model_card_eval import CardRequest, measure_card
from cobot_hybrid_perception.models import default_model_path
from cobot_hybrid_protocol.errors import SchemaError
from cobot_hybrid_protocol.model_card import (
    CARD_SCHEMA,
    CONF_RANGE,
    IOU_RANGE,
    MAX_CLASSES,
    MAX_DET_RANGE,
    ModelCard,
    card_to_json,
    read_card,
    validate_card,
    write_card,
)
from cobot_hybrid_protocol.settings import specs

SHA_A, SHA_B = 'a' * 64, '0123456789abcdef' * 4


def good_card() -> dict[str, Any]:
    return {'schema': 'cobot_hybrid/model_card/v1',
            'model': {'name': 'yolo11n-pose', 'version': 3, 'sha256': SHA_A,
                      'size_bytes': 11_651_805, 'imgsz': 320, 'task': 'pose',
                      'precision': 'fp32', 'format': 'onnx'},
            'classes': ['person'],
            'settings': {'conf': 0.25, 'iou': 0.45, 'max_det': 100},
            'metrics': {'images': 5, 'agreement': 0.97, 'champion_sha256': SHA_B,
                        'latency_p50_ms': 24.1, 'latency_p99_ms': 31.0},
            'created_at': 1_795_790_000.0}


def test_a_good_card_round_trips() -> None:
    data = good_card()
    card = validate_card(data)
    assert isinstance(card, ModelCard)
    assert card.model.label == f'yolo11n-pose v3 ({SHA_A[:12]})'
    assert card.classes == ('person',) and card.settings.max_det == 100
    assert card_to_json(card) == data
    assert validate_card(card_to_json(card)) == card
    jsonschema.validate(data, CARD_SCHEMA)


def test_a_first_version_has_no_champion() -> None:
    data = good_card()
    data['metrics'].update(agreement=None, champion_sha256=None)
    assert validate_card(data).metrics.agreement is None
    jsonschema.validate(data, CARD_SCHEMA)


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split('.')
    for key in parents:
        data = data[key]
    data[last] = value


_DROP = object()


# (path, value, what the error names, whether the JSON Schema can say it too)
BAD = [
    ('metrics.latency_p50_ms', math.nan, 'metrics.latency_p50_ms', False),   # NaN is no JSON
    ('metrics.latency_p99_ms', math.inf, 'metrics.latency_p99_ms', False),
    ('settings.conf', -math.inf, 'settings.conf', False),
    ('created_at', 1e400, 'created_at', False),
    ('model.size_bytes', -1, 'model.size_bytes', True),
    ('model.size_bytes', 0, 'model.size_bytes', True),
    ('model.sha256', 'ABC', 'model.sha256', True),
    ('model.sha256', 'A' * 64, 'model.sha256', True),
    ('metrics.champion_sha256', 'z' * 64, 'metrics.champion_sha256', True),
    ('classes', ['person'] * (MAX_CLASSES + 1), 'classes', True),
    ('classes', [], 'classes', True),
    ('classes', ['x' * 65], 'classes[0]', True),
    ('classes', ['person', 7], 'classes[1]', True),
    ('unknown', 1, 'unknown fields', True),
    ('settings.extra', 1, 'settings has unknown fields', True),
    ('schema', 'cobot_hybrid/model_card/v2', 'schema', True),
    ('model.version', 0, 'model.version', True),
    ('model.task', 'segment', 'model.task', True),
    ('model.format', 'engine', 'model.format', True),
    ('settings.conf', 1.5, 'settings.conf', True),
    ('settings.max_det', 0, 'settings.max_det', True),
    ('settings.max_det', True, 'settings.max_det', False),   # JSON Schema: true is no integer
    ('metrics.images', 0, 'metrics.images', True),
    ('metrics.agreement', 1.2, 'metrics.agreement', True),
    ('metrics.agreement', None, 'both null', False),            # agreement without champion
    ('metrics.latency_p99_ms', 1.0, 'latency_p99_ms must be at least', False),
    ('created_at', 5_000_000_000.0, 'created_at', True),
    ('metrics', _DROP, 'missing', True),
]


@pytest.mark.parametrize(('path', 'value', 'named', 'schema_says'), BAD,
                         ids=[f'{p}={str(v)[:12]}' for p, v, _, _ in BAD])
def test_a_bad_card_is_refused_naming_the_field(path: str, value: Any, named: str,
                                                 schema_says: bool) -> None:
    data = good_card()
    if value is _DROP:
        del data[path]
    else:
        _set(data, path, copy.deepcopy(value))
    with pytest.raises(SchemaError, match=named.replace('[', r'\[').replace(']', r'\]')):
        validate_card(data)
    if schema_says:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, CARD_SCHEMA)


def test_the_card_bounds_are_the_detectors() -> None:
    settings = specs(DetectorConfig)
    assert (settings['conf'][1].low, settings['conf'][1].high) == CONF_RANGE
    assert (settings['iou'][1].low, settings['iou'][1].high) == IOU_RANGE
    assert (settings['max_det'][1].low, settings['max_det'][1].high) == MAX_DET_RANGE


def test_a_card_file_round_trips_and_bad_files_are_refused(tmp_path: Path) -> None:
    card = validate_card(good_card())
    path = write_card(card, tmp_path / 'card.json')
    assert read_card(path) == card
    assert path.stat().st_mode & 0o777 == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name != 'card.json']   # no temporary left
    bad = {'nan.json': '{"schema": NaN}', 'text.json': 'not json',
           'big.json': json.dumps({'pad': 'x' * 300_000}),
           'deep.json': '[' * 50 + ']' * 50,
           'twice.json': '{"schema": 1, "schema": 2}'}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SchemaError, match=name):
            read_card(tmp_path / name)
    data = good_card()
    data['model']['sha256'] = 'nope'
    (tmp_path / 'field.json').write_text(json.dumps(data))
    with pytest.raises(SchemaError, match=r'field\.json: model\.sha256'):
        read_card(tmp_path / 'field.json')
    with pytest.raises(FileNotFoundError):
        read_card(tmp_path / 'absent.json')


# --- a card measured on real photos ------------------------------------------------------------

PHOTOS = ['sample:astronaut', 'sample:bus', 'sample:coffee']


def test_model_card_of_the_default_model_against_itself(tmp_path: Path) -> None:
    model = default_model_path(320)
    out = tmp_path / 'card.json'
    assert main(['model-card', str(model), '--name', 'yolo11n-pose', '--version', '1',
                 '--champion', str(model), '--images', *PHOTOS, '--runs', '6',
                 '--threads', '1', '--out', str(out)]) == 0
    card = read_card(out)
    assert card.model.size_bytes == model.stat().st_size
    assert (card.model.imgsz, card.model.task, card.model.precision) == (320, 'pose', 'fp32')
    assert card.classes == ('person',)
    assert card.metrics.images == len(PHOTOS)
    assert card.metrics.agreement == 1.0
    assert card.metrics.champion_sha256 == card.model.sha256
    assert 0 < card.metrics.latency_p50_ms <= card.metrics.latency_p99_ms
    assert (card.settings.conf, card.settings.iou, card.settings.max_det) == (
        DetectorConfig.conf, DetectorConfig.iou, DetectorConfig.max_det)


def test_a_card_without_a_champion_has_no_agreement() -> None:
    card = measure_card(CardRequest(default_model_path(320), 'yolo11n-pose', 2,
                                    images=('sample:astronaut',), runs=2, threads=1),
                        now_s=1_795_790_000.0)
    assert card.metrics.agreement is None and card.metrics.champion_sha256 is None
    assert card.created_at == 1_795_790_000.0 and card.model.version == 2


@pytest.mark.parametrize(('model', 'extra', 'says'), [
    ('/nonexistent/m.onnx', [], 'does not exist'),
    ('{model}', ['--champion', '/nonexistent/c.onnx'], 'champion /nonexistent/c.onnx'),
    ('{card}', [], 'not an .onnx file'),
    ('{model}', ['--images', '/nonexistent-folder'], 'neither'),
    ('{model}', ['--name', 'a\tb'], 'name'),
    ('{model}', ['--version', '0'], 'version 0'),
    ('{model}', ['--conf', '2'], 'conf'),
])
def test_model_card_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        model: str, extra: list[str], says: str) -> None:
    card = tmp_path / 'card.json'
    card.write_text('{}')
    options = {'--name': 'yolo11n-pose', '--version': '1', '--images': 'sample:astronaut'}
    options.update(zip(extra[::2], extra[1::2], strict=True))
    argv = ['model-card', model.format(model=default_model_path(320), card=card),
            *[item for pair in options.items() for item in pair]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count('\n') == 1, err


def test_a_request_is_checked_before_any_model_loads() -> None:
    with pytest.raises(ConfigError, match='images'):
        CardRequest(default_model_path(320), 'm', 1, images=())
