"""``cobot-hybrid rollout``: start from a real MLflow registry (SQLite), status, abort, errors.

Two small files stand in for model versions (the registry and the rollout store check only
size and sha256; the detector's checks of real ONNX files are in the perception tests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from cobot_hybrid_planner import rollout_cli
from cobot_hybrid_planner.model_registry import ModelRegistry
from cobot_hybrid_planner.rollout import RolloutController, RolloutError
from cobot_hybrid_protocol.model_card import CardMetrics, DetectorSettings, ModelCard
from cobot_hybrid_protocol.model_update import ModelRef

os.environ.setdefault('MLFLOW_DISABLE_TELEMETRY', 'true')
NAME = 'detector'


def _card(path: Path, version: int) -> ModelCard:
    data = path.read_bytes()
    return ModelCard(ModelRef(NAME, version, hashlib.sha256(data).hexdigest(), len(data), 320),
                     ('person',), DetectorSettings(), CardMetrics(3, 20.0, 25.0), 1.8e9)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    rollout_cli.register(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, str]:
    uri = f'sqlite:///{tmp_path / "registry.db"}'
    registry = ModelRegistry(uri, tmp_path / 'artifacts')
    for version, seed in ((1, b'one'), (2, b'two')):
        path = tmp_path / f'v{version}.onnx'
        path.write_bytes(hashlib.sha256(seed).digest() * 2000)
        assert registry.register(path, _card(path, version)) == version
    registry.promote(NAME, 1)
    fleet = tmp_path / 'fleet.yaml'
    fleet.write_text(yaml.safe_dump({f'cobot-{i}': f'site-{i % 2}' for i in range(20)}))
    return tmp_path, uri


def test_start_status_abort(setup: tuple[Path, str], capsys: pytest.CaptureFixture[str]
                            ) -> None:
    tmp, uri = setup
    data = str(tmp / 'planner')
    assert _cli(['rollout', 'start', '--data-dir', data, '--registry', uri, '--name', NAME,
                 '--version', '2', '--fleet', str(tmp / 'fleet.yaml'), '--id', 'r-1']) == 0
    out = capsys.readouterr().out
    assert 'rollout r-1: detector v2' in out and 'champion detector v1' in out
    assert ModelRegistry(uri, tmp / 'artifacts').aliases(NAME) == {'champion': 1, 'canary': 2}
    controller = RolloutController(tmp / 'planner' / 'rollouts', print, print)
    assert controller.state('r-1') == 'running'
    status = controller.status('r-1')
    assert status['robots'] == 20 and status['champion']['version'] == 1
    # Both files are in the blob store, checked: the candidate to send, the champion to
    # send to a robot that lost it.
    assert controller.blobs.has(status['candidate']['sha256'])
    assert controller.blobs.has(status['champion']['sha256'])
    assert _cli(['rollout', 'status', '--data-dir', data, '--json']) == 0
    assert json.loads(capsys.readouterr().out)[0]['state'] == 'running'
    with pytest.raises(RolloutError, match='still running'):
        _cli(['rollout', 'start', '--data-dir', data, '--registry', uri, '--name', NAME,
              '--version', '2', '--fleet', str(tmp / 'fleet.yaml'), '--id', 'r-2'])
    assert _cli(['rollout', 'abort', '--data-dir', data, 'r-1']) == 0
    assert 'r-1: aborted' in capsys.readouterr().out
    with pytest.raises(RolloutError, match='aborted: nothing to abort'):
        _cli(['rollout', 'abort', '--data-dir', data, 'r-1'])
    with pytest.raises(RolloutError, match='not paused'):
        _cli(['rollout', 'resume', '--data-dir', data, 'r-1'])


@pytest.mark.parametrize(('fleet', 'error'), [
    ('[1, 2]', 'must map robot ids'),
    ('{"bad/id": site}', 'robot_id'),
    ('{cobot-1: ""}', 'must be text'),
])
def test_a_bad_fleet_file_is_one_clear_error(setup: tuple[Path, str], fleet: str,
                                             error: str) -> None:
    tmp, uri = setup
    (tmp / 'bad.yaml').write_text(fleet)
    with pytest.raises(RolloutError, match=error):
        _cli(['rollout', 'start', '--data-dir', str(tmp / 'p'), '--registry', uri, '--name',
              NAME, '--version', '2', '--fleet', str(tmp / 'bad.yaml')])


def test_the_champion_cannot_be_rolled_out(setup: tuple[Path, str]) -> None:
    tmp, uri = setup
    with pytest.raises(RolloutError, match='champion already'):
        _cli(['rollout', 'start', '--data-dir', str(tmp / 'p'), '--registry', uri, '--name',
              NAME, '--version', '1', '--fleet', str(tmp / 'fleet.yaml')])
