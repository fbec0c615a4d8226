"""The model registry on a real MLflow: SQLite stores in tmp_path, and one real server process.

Two real versions: the default model at 320 and at 640 from the model cache, with cards
measured by the detector on real photos. Each test opens its own store, a copy of one
migrated empty database (MLflow's first use migrates it: about 2 s, paid once here).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest import ROOT, free_port, wait_for

from cobot_hybrid_cli import main
from cobot_hybrid_perception.calibration_record import file_sha256
from cobot_hybrid_perception.model_card_eval import CardRequest, measure_card
from cobot_hybrid_perception.models import default_model_path
from cobot_hybrid_planner.model_registry import (
    EXPERIMENT,
    ModelRegistry,
    RegistryError,
    default_registry_uri,
)
from cobot_hybrid_protocol.model_card import ModelCard, write_card

NAME = 'yolo11n-pose'
NOW = 1_795_790_000.0


@dataclass(frozen=True)
class Versions:
    small: Path          # the default model at 320
    large: Path          # at 640
    small_card: ModelCard
    large_card: ModelCard


@pytest.fixture(scope='module')
def versions() -> Versions:
    small, large = default_model_path(320), default_model_path(640)
    small_card = measure_card(CardRequest(small, NAME, 1, images=('sample:astronaut',), runs=2,
                                          threads=1), now_s=NOW)
    large_card = measure_card(CardRequest(large, NAME, 2, champion=small,
                                          images=('sample:astronaut',), runs=2, threads=1),
                              now_s=NOW + 60)
    return Versions(small, large, small_card, large_card)


@pytest.fixture(scope='module')
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry database MLflow has migrated, with nothing in it."""
    folder = tmp_path_factory.mktemp('template')
    ModelRegistry(f'sqlite:///{folder}/registry.db').list(NAME)
    return folder / 'registry.db'


@pytest.fixture
def registry(tmp_path: Path, empty_store: Path) -> ModelRegistry:
    shutil.copy(empty_store, tmp_path / 'registry.db')
    return ModelRegistry(f'sqlite:///{tmp_path}/registry.db')


def _artifact(registry: ModelRegistry, file_name: str) -> Path:
    assert registry.artifact_root is not None
    (path,) = list(registry.artifact_root.rglob(f'model/{file_name}'))
    return path


# --- versions and cards --------------------------------------------------------------------

def test_two_versions_listed_with_their_cards(registry: ModelRegistry,
                                              versions: Versions) -> None:
    start = time.perf_counter()
    assert registry.register(versions.small, versions.small_card) == 1
    register_s = time.perf_counter() - start
    assert registry.register(versions.large, versions.large_card) == 2
    listed = registry.list(NAME)
    assert [v.version for v in listed] == [1, 2]
    small, large = (v.tags for v in listed)
    assert small['sha256'] == file_sha256(versions.small)
    assert large['sha256'] == file_sha256(versions.large)
    assert (small['imgsz'], large['imgsz']) == ('320', '640')
    assert small['size_bytes'] == str(versions.small.stat().st_size)
    assert (large['task'], large['precision'], large['format']) == ('pose', 'fp32', 'onnx')
    assert json.loads(large['classes']) == ['person']
    assert json.loads(large['settings']) == {'conf': 0.25, 'iou': 0.45, 'max_det': 100}
    assert json.loads(small['metrics.agreement']) is None
    assert json.loads(large['metrics.champion_sha256']) == small['sha256']
    assert 0 <= json.loads(large['metrics.agreement']) <= 1
    assert registry.card(NAME, 2) == versions.large_card
    assert registry.card(NAME, 1) == versions.small_card
    print(f'register {versions.small.stat().st_size / 1e6:.1f} MB: {register_s:.2f} s')


def test_the_same_file_again_is_the_same_version(registry: ModelRegistry,
                                                 versions: Versions) -> None:
    assert registry.register(versions.small, versions.small_card) == 1
    assert registry.register(versions.small, replace(
        versions.small_card, model=replace(versions.small_card.model, version=7))) == 1
    assert [v.version for v in registry.list(NAME)] == [1]
    # The registry numbers the versions: a card saying 5 becomes version 2.
    assert registry.register(versions.large, replace(
        versions.large_card, model=replace(versions.large_card.model, version=5))) == 2
    assert registry.card(NAME, 2).model.version == 2


def test_a_file_that_is_not_its_card_is_refused(registry: ModelRegistry,
                                                versions: Versions) -> None:
    with pytest.raises(RegistryError) as caught:
        registry.register(versions.large, versions.small_card)
    message = str(caught.value)
    assert file_sha256(versions.large) in message and versions.small_card.model.sha256 \
        in message
    with pytest.raises(RegistryError, match='model name'):
        registry.register(versions.small, replace(versions.small_card, model=replace(
            versions.small_card.model, name='has space')))
    assert registry.list(NAME) == ()


# --- aliases --------------------------------------------------------------------------------

def test_promote_canary_and_rollback_move_the_aliases(registry: ModelRegistry,
                                                      versions: Versions) -> None:
    registry.register(versions.small, versions.small_card)
    registry.register(versions.large, versions.large_card)
    assert registry.aliases(NAME) == {}
    assert registry.promote(NAME, 1) == {'champion': 1}
    with pytest.raises(RegistryError, match='is the champion'):
        registry.set_canary(NAME, 1)
    registry.set_canary(NAME, 2)
    assert registry.aliases(NAME) == {'champion': 1, 'canary': 2}
    assert registry.promote(NAME, 2) == {'champion': 2, 'previous': 1}   # canary gone
    assert registry.promote(NAME, 2) == {'champion': 2, 'previous': 1}   # no change
    assert {v.version: v.aliases for v in registry.list(NAME)} == {1: ('previous',),
                                                                    2: ('champion',)}
    assert registry.rollback(NAME, now_s=NOW) == {'champion': 1}
    assert registry.list(NAME)[1].tags['rolled_back_at'] == repr(NOW)
    with pytest.raises(RegistryError, match='no previous champion'):
        registry.rollback(NAME)
    for alias in ('champion', 'previous'):
        with pytest.raises(RegistryError, match='promote'):
            registry.set_alias(NAME, alias, 2)
    registry.set_alias(NAME, 'staging', 2)
    registry.set_alias(NAME, 'canary', 2)
    assert registry.aliases(NAME) == {'champion': 1, 'staging': 2, 'canary': 2}
    registry.clear_canary(NAME)
    assert 'canary' not in registry.aliases(NAME)
    with pytest.raises(RegistryError, match='no version 9 .*versions: 1, 2'):
        registry.promote(NAME, 9)
    with pytest.raises(RegistryError, match='no model other'):
        registry.aliases('other')


# --- files ----------------------------------------------------------------------------------

def test_fetch_verifies_the_file_against_the_card(registry: ModelRegistry, versions: Versions,
                                                  tmp_path: Path) -> None:
    registry.register(versions.small, versions.small_card)
    dest = tmp_path / 'fetched'
    start = time.perf_counter()
    path = registry.fetch(NAME, 1, dest)
    fetch_s = time.perf_counter() - start
    assert path == dest / f'{NAME}-v1.onnx'
    assert path.read_bytes() == versions.small.read_bytes()
    path.unlink()
    stored = _artifact(registry, versions.small.name)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF                      # same size, other bytes
    stored.write_bytes(bytes(data))
    with pytest.raises(RegistryError) as caught:
        registry.fetch(NAME, 1, dest)
    assert versions.small_card.model.sha256 in str(caught.value)
    assert file_sha256(stored) in str(caught.value)
    stored.write_bytes(bytes(data[:1000]))            # truncated
    with pytest.raises(RegistryError, match='holds 1000 bytes'):
        registry.fetch(NAME, 1, dest)
    assert list(dest.iterdir()) == []                 # nothing unverified left behind
    print(f'fetch {versions.small.stat().st_size / 1e6:.1f} MB: {fetch_s:.3f} s')


def test_engines_per_gpu_and_tensorrt_version(registry: ModelRegistry, versions: Versions,
                                              tmp_path: Path) -> None:
    # No GPU here: a small file stands in for a TensorRT engine; what is under test is the
    # registry's bookkeeping (an artifact per GPU and TensorRT version, its own sha256).
    registry.register(versions.small, versions.small_card)
    engine = tmp_path / 'yolo11n-pose-320.engine'
    engine.write_bytes(b'not really an engine' * 100)
    added = registry.add_engine(NAME, 1, engine, 'NVIDIA Jetson Orin NX', '10.3.0')
    assert added.sha256 == file_sha256(engine) and added.size_bytes == 2000
    other = tmp_path / 'other.engine'
    other.write_bytes(b'x' * 10)
    registry.add_engine(NAME, 1, other, 'NVIDIA RTX 4090', '10.8.0.43')
    assert [(e.gpu, e.trt_version) for e in registry.engines(NAME, 1)] == [
        ('NVIDIA Jetson Orin NX', '10.3.0'), ('NVIDIA RTX 4090', '10.8.0.43')]
    fetched = registry.fetch_engine(NAME, 1, 'NVIDIA Jetson Orin NX', '10.3.0', tmp_path / 'e')
    assert fetched.read_bytes() == engine.read_bytes()
    with pytest.raises(RegistryError, match='no engine for'):
        registry.fetch_engine(NAME, 1, 'NVIDIA Jetson Orin NX', '9.0', tmp_path / 'e')
    with pytest.raises(RegistryError, match='trt_version'):
        registry.add_engine(NAME, 1, engine, 'NVIDIA Jetson Orin NX', 'latest')
    assert registry.fetch(NAME, 1, tmp_path / 'm').read_bytes() == versions.small.read_bytes()


# --- where the registry lives ------------------------------------------------------------------

def test_the_default_store_is_in_the_planner_data_folder(
        tmp_path: Path, empty_store: Path, versions: Versions,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('COBOT_HYBRID_DATA_DIR', str(tmp_path))
    (tmp_path / 'planner').mkdir()
    shutil.copy(empty_store, tmp_path / 'planner' / 'registry.db')
    assert default_registry_uri() == f'sqlite:///{tmp_path}/planner/registry.db'
    registry = ModelRegistry()
    assert registry.artifact_root == tmp_path / 'planner' / 'registry-artifacts'
    registry.register(versions.small, versions.small_card)
    assert _artifact(registry, versions.small.name).is_file()
    elsewhere = ModelRegistry(registry.uri, artifact_root=tmp_path / 'other')
    with pytest.raises(RegistryError, match=f'experiment {EXPERIMENT} .* keeps its artifacts'):
        elsewhere.register(versions.large, versions.large_card)


@pytest.mark.parametrize(('uri', 'root', 'says'), [
    ('postgresql://db/registry', None, 'use sqlite'),
    ('sqlite:///relative.db', None, 'absolute path'),
    ('http://127.0.0.1:5000', Path('/tmp/artifacts'), 'give no artifact root'),
])
def test_a_registry_uri_it_cannot_use_is_refused(uri: str, root: Path | None,
                                                 says: str) -> None:
    with pytest.raises(RegistryError, match=says):
        ModelRegistry(uri, root)


def test_the_planner_imports_without_mlflow() -> None:
    code = ('import builtins\n'
            'real = builtins.__import__\n'
            'def guard(name, *a, **k):\n'
            '    if name.split(".")[0] == "mlflow":\n'
            '        raise ImportError("no mlflow on this image")\n'
            '    return real(name, *a, **k)\n'
            'builtins.__import__ = guard\n'
            'import cobot_hybrid_planner.cli, cobot_hybrid_planner.model_registry as m\n'
            'try:\n'
            '    m.ModelRegistry("sqlite:////tmp/never.db")\n'
            'except m.RegistryError as exc:\n'
            '    print(exc)\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, check=True)
    assert 'pip install mlflow==3.17.2' in result.stdout, result.stdout + result.stderr


# --- the command line ------------------------------------------------------------------------

def test_the_model_commands_end_to_end(tmp_path: Path, empty_store: Path, versions: Versions,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(empty_store, tmp_path / 'registry.db')
    uri = f'sqlite:///{tmp_path}/registry.db'
    small_card = write_card(versions.small_card, tmp_path / 'small.json')
    large_card = write_card(versions.large_card, tmp_path / 'large.json')

    def run(*args: str) -> tuple[int, str, str]:
        code = main(['model', *args, '--registry', uri])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run('register', str(versions.small), '--name', NAME, '--card',
                       str(small_card))
    assert code == 0 and out.startswith(f'{NAME} v1: ')
    code, out, _ = run('register', str(versions.large), '--name', NAME, '--card',
                       str(large_card), '--json')
    assert code == 0 and json.loads(out)['version'] == 2
    assert run('promote', '--name', NAME, '--version', '1')[1] == f'{NAME}: champion v1\n'
    assert run('canary', '--name', NAME, '--version', '2')[1] == \
        f'{NAME}: canary v2, champion v1\n'
    assert run('promote', '--name', NAME, '--version', '2')[1] == \
        f'{NAME}: champion v2, previous v1\n'
    code, out, _ = run('list', '--name', NAME)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ['version', 'aliases', 'sha256']
    assert lines[1].split()[:2] == ['1', 'previous'] and lines[2].split()[:2] == ['2',
                                                                                  'champion']
    code, out, _ = run('rollback', '--name', NAME, '--json')
    assert json.loads(out) == {'name': NAME, 'aliases': {'champion': 1}}
    listed = json.loads(run('list', '--name', NAME, '--json')[1])['versions']
    assert listed[1]['rolled_back_at'] is not None and listed[1]['imgsz'] == 640
    assert listed[1]['metrics']['champion_sha256'] == versions.small_card.model.sha256
    code, out, _ = run('show', '--name', NAME, '--version', '2')
    assert code == 0 and json.loads(out)['model']['sha256'] == versions.large_card.model.sha256
    code, out, _ = run('fetch', '--name', NAME, '--version', '1', '--dest', str(tmp_path / 'f'))
    assert code == 0 and Path(out.strip()).read_bytes() == versions.small.read_bytes()
    for args, says in [
            (('rollback', '--name', NAME), 'no previous champion'),
            (('register', str(versions.small), '--name', NAME), 'cobot-hybrid model-card'),
            (('register', str(versions.small), '--name', 'other', '--card', str(small_card)),
             "is for 'yolo11n-pose'"),
            (('register', str(versions.small), '--name', NAME, '--card',
              str(tmp_path / 'absent.json')), 'cannot be read'),
            (('show', '--name', NAME, '--version', '3'), 'no version 3'),
            (('canary', '--name', NAME), '--version V'),
    ]:
        code, out, err = run(*args)
        assert code == 2 and says in err and err.count('\n') == 1, (args, err)


# --- one real server ------------------------------------------------------------------------

def _live_members(pgid: int) -> list[int]:
    """Processes of a process group that still run (zombies aside: nobody may reap them)."""
    members = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != 'Z':
            members.append(int(stat.parent.name))
    return members


@contextmanager
def mlflow_server(folder: Path) -> Iterator[tuple[str, int]]:
    """``mlflow server`` on 127.0.0.1 in its own session; its whole process group killed."""
    port = free_port()
    env = {**os.environ, 'MLFLOW_DISABLE_TELEMETRY': 'true',
           'MLFLOW_SERVER_ENABLE_JOB_EXECUTION': 'false'}   # no job runner: the registry alone
    start = time.perf_counter()
    with (folder / 'server.log').open('wb') as log:
        server = subprocess.Popen(
            [sys.executable, '-m', 'mlflow', 'server', '--backend-store-uri',
             f'sqlite:///{folder}/server.db', '--artifacts-destination',
             str(folder / 'server-artifacts'), '--host', '127.0.0.1', '--port', str(port),
             '--workers', '1'], stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
    url = f'http://127.0.0.1:{port}'

    def healthy() -> bool:
        if server.poll() is not None:
            return True          # it died: stop waiting, the assertion below says so
        try:
            with urllib.request.urlopen(f'{url}/health', timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    try:
        assert wait_for(healthy, 90.0, poll_s=0.25), 'mlflow server not healthy after 90 s'
        assert server.poll() is None, (folder / 'server.log').read_text()[-3000:]
        print(f'mlflow server healthy after {time.perf_counter() - start:.1f} s')
        yield url, server.pid
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):   # SIGKILL: helpers that outlived it
            with suppress(ProcessLookupError):
                os.killpg(server.pid, sig)
            with suppress(subprocess.TimeoutExpired):
                server.wait(timeout=15)


def test_register_and_fetch_through_a_real_server(versions: Versions, tmp_path: Path) -> None:
    with mlflow_server(tmp_path) as (url, pgid):
        registry = ModelRegistry(url)
        assert registry.artifact_root is None
        start = time.perf_counter()
        assert registry.register(versions.small, versions.small_card) == 1
        register_s = time.perf_counter() - start
        assert registry.register(versions.large, versions.large_card) == 2
        assert registry.register(versions.small, versions.small_card) == 1
        assert registry.promote(NAME, 1) == {'champion': 1}
        assert registry.promote(NAME, 2) == {'champion': 2, 'previous': 1}
        start = time.perf_counter()
        path = registry.fetch(NAME, 2, tmp_path / 'fetched')
        fetch_s = time.perf_counter() - start
        assert file_sha256(path) == versions.large_card.model.sha256
        assert registry.card(NAME, 2) == versions.large_card
        stored = list((tmp_path / 'server-artifacts').rglob(versions.large.name))
        assert len(stored) == 1                     # the server keeps the files
        print(f'through the server: register {register_s:.2f} s, fetch {fetch_s:.2f} s')
    assert wait_for(lambda: not _live_members(pgid), 15.0), \
        f'mlflow processes {_live_members(pgid)} outlived the server'
