"""``auto`` from measurements: the choice, its cache and the hardware fingerprint.

The pure parts run on fake backends with given timings; one test measures the real ONNX
Runtime and OpenVINO on this machine and sees the choice come back from the cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cobot_hybrid_perception.backends import BackendOptions, auto_choice, select_backend
from cobot_hybrid_perception.backends.auto_choice import (
    CACHE_NAME,
    ChoiceCache,
    choice_key,
    choose,
    hardware_fingerprint,
    time_backend,
)
from cobot_hybrid_perception.errors import BackendUnavailableError, ModelLoadError
from cobot_hybrid_perception.models import resolve_model

FINGERPRINT = {'cpu': 'Test CPU 9000', 'cores': 4, 'gpus': [], 'runtimes': {'fake': '1.0'}}


class FakeBackend:
    """A backend that does nothing and remembers whether it was closed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.precision = 'fp32'
        self.input_shape = (1, 3, 32, 32)
        self.metadata: dict[str, str] = {}
        self.closed = False
        self.runs = 0

    def infer(self, tensor: Any) -> list[Any]:
        self.runs += 1
        return [tensor]

    def close(self) -> None:
        self.closed = True


class Builder:
    """``build`` for :func:`choose`: some names load, some are unavailable."""

    def __init__(self, unavailable: dict[str, str] | None = None) -> None:
        self.unavailable = unavailable or {}
        self.built: dict[str, FakeBackend] = {}
        self.calls: list[str] = []

    def __call__(self, name: str) -> FakeBackend:
        self.calls.append(name)
        if name in self.unavailable:
            raise BackendUnavailableError(self.unavailable[name])
        self.built[name] = FakeBackend(name)
        return self.built[name]


def timer_for(ms: dict[str, float]) -> Any:
    return lambda backend: ms[backend.name]


def run(cache_file: Path, builder: Builder, ms: dict[str, float],
        candidates: tuple[str, ...] = ('gpu-rt', 'cpu-a', 'cpu-b'), key: str = 'k1',
        today: str = '2026-12-02') -> tuple[FakeBackend, str]:
    backend, reason = choose(candidates, builder, key, ChoiceCache(cache_file), FINGERPRINT,
                             timer=timer_for(ms), today=lambda: today)
    assert isinstance(backend, FakeBackend)
    return backend, reason


def test_the_fastest_that_loads_wins_and_the_rest_are_closed(tmp_path: Path) -> None:
    builder = Builder({'gpu-rt': 'no GPU here'})
    backend, reason = run(tmp_path / CACHE_NAME, builder, {'cpu-a': 24.1, 'cpu-b': 44.0})
    assert backend.name == 'cpu-a' and not backend.closed
    assert builder.built['cpu-b'].closed
    assert reason == ('auto picked cpu-a: 24.1 ms vs cpu-b 44.0 ms on Test CPU 9000 (4 cores) '
                      '(measured now) (passed over gpu-rt: no GPU here)')


def test_the_next_start_builds_only_the_cached_winner(tmp_path: Path) -> None:
    cache = tmp_path / CACHE_NAME
    run(cache, Builder(), {'gpu-rt': 9.0, 'cpu-a': 24.1, 'cpu-b': 44.0}, today='2026-11-30')
    again = Builder()
    backend, reason = run(cache, again, {})   # a timer call would raise KeyError
    assert again.calls == ['gpu-rt'] and backend.name == 'gpu-rt'
    assert reason.startswith('auto picked gpu-rt: 9.0 ms vs cpu-a 24.1 ms, cpu-b 44.0 ms')
    assert reason.endswith('(cached 2026-11-30)')


def test_another_key_measures_again(tmp_path: Path) -> None:
    cache = tmp_path / CACHE_NAME
    run(cache, Builder(), {'gpu-rt': 9.0, 'cpu-a': 24.1, 'cpu-b': 44.0}, key='one')
    backend, reason = run(cache, Builder(), {'gpu-rt': 30.0, 'cpu-a': 24.1, 'cpu-b': 44.0},
                          key='two')
    assert backend.name == 'cpu-a' and 'measured now' in reason
    doc = json.loads(cache.read_text())
    assert set(doc['choices']) == {'one', 'two'}


def test_a_single_candidate_is_said_to_be_the_only_one(tmp_path: Path) -> None:
    _, reason = run(tmp_path / CACHE_NAME, Builder({'gpu-rt': 'x', 'cpu-b': 'y'}),
                    {'cpu-a': 20.0})
    assert 'auto picked cpu-a: 20.0 ms, the only one that loads here' in reason


@pytest.mark.parametrize(('content', 'problem'), [
    (b'{"format": "cobot_hybrid.auto-backend/1", "choi', 'is not JSON'),
    (b'\xff\xfe not utf-8', 'is not JSON'),
    (b'[1, 2, 3]', 'is not a cobot_hybrid.auto-backend/1 document'),
    (b'{"format": "other", "choices": {}}', 'is not a cobot_hybrid.auto-backend/1 document'),
    (b'{"format": "cobot_hybrid.auto-backend/1", "choices": {"k1": {"backend": "cpu-a", '
     b'"timings_ms": {"cpu-a": -1}}}}', 'has a bad entry'),
    (b'{"format": "cobot_hybrid.auto-backend/1", "choices": {"k1": {"backend": "cpu-a", '
     b'"timings_ms": {"cpu-b": 3}}}}', 'has a bad entry'),
    (b'[' * 100_000 + b']' * 100_000, 'is not JSON'),
    (b' ' * (auto_choice.MAX_CACHE_BYTES + 1), 'is over'),
])
def test_a_corrupt_cache_is_ignored_said_and_rewritten(tmp_path: Path, content: bytes,
                                                       problem: str) -> None:
    cache = tmp_path / CACHE_NAME
    cache.write_bytes(content)
    backend, reason = run(cache, Builder(), {'gpu-rt': 30.0, 'cpu-a': 24.1, 'cpu-b': 44.0})
    assert backend.name == 'cpu-a' and 'measured now' in reason
    assert f'choice cache {cache} {problem}' in reason and 'ignored, rewritten' in reason
    doc = json.loads(cache.read_text())
    assert doc['choices']['k1']['backend'] == 'cpu-a'
    _, again = run(cache, Builder(), {})
    assert 'cached' in again and 'choice cache' not in again


def test_a_cached_winner_that_no_longer_loads_is_measured_again(tmp_path: Path) -> None:
    cache = tmp_path / CACHE_NAME
    run(cache, Builder(), {'gpu-rt': 9.0, 'cpu-a': 24.1, 'cpu-b': 44.0})
    backend, reason = run(cache, Builder({'gpu-rt': 'driver gone'}),
                          {'cpu-a': 24.1, 'cpu-b': 44.0})
    assert backend.name == 'cpu-a'
    assert 'the cached choice gpu-rt no longer loads (driver gone): measured again' in reason


def test_nothing_loads_is_an_error_with_every_reason(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match='gpu-rt: a; cpu-a: b; cpu-b: c'):
        run(tmp_path / CACHE_NAME, Builder({'gpu-rt': 'a', 'cpu-a': 'b', 'cpu-b': 'c'}), {})


def test_a_load_error_closes_what_was_built_and_propagates(tmp_path: Path) -> None:
    builder = Builder()

    def build(name: str) -> FakeBackend:
        if name == 'cpu-b':
            raise ModelLoadError('corrupt model')
        return builder(name)

    with pytest.raises(ModelLoadError, match='corrupt'):
        choose(('gpu-rt', 'cpu-a', 'cpu-b'), build, 'k', ChoiceCache(tmp_path / CACHE_NAME),
               FINGERPRINT, timer=timer_for({'gpu-rt': 1.0, 'cpu-a': 2.0}))
    assert all(backend.closed for backend in builder.built.values())


def test_an_unwritable_cache_still_chooses_and_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / 'not-a-dir'
    blocker.write_text('a file where the cache dir should be')
    backend, reason = run(blocker / CACHE_NAME, Builder(), {'gpu-rt': 5.0, 'cpu-a': 6.0,
                                                            'cpu-b': 7.0})
    assert backend.name == 'gpu-rt' and 'choice not cached' in reason


@pytest.mark.parametrize('field', ['model', 'precision', 'threads', 'devices', 'cpu', 'cores',
                                   'gpus', 'runtimes', 'candidates'])
def test_the_key_changes_with_everything_that_changes_the_winner(field: str) -> None:
    base: dict[str, Any] = {'model': 'abc', 'candidates': ('a', 'b'), 'precision': 'fp16',
                            'threads': 0, 'devices': 'cuda:0 openvino:CPU'}
    hardware = dict(FINGERPRINT)
    key = choice_key(base['model'], base['candidates'], base['precision'], base['threads'],
                     base['devices'], hardware)
    changed = {'model': 'abd', 'precision': 'int8', 'threads': 2, 'devices': 'cuda:1',
               'candidates': ('a',), 'cpu': 'Other CPU', 'cores': 8, 'gpus': ['NVIDIA H200'],
               'runtimes': {'fake': '1.1'}}[field]
    if field in base:
        base[field] = changed
    else:
        hardware[field] = changed
    assert choice_key(base['model'], base['candidates'], base['precision'], base['threads'],
                      base['devices'], hardware) != key


def test_time_backend_runs_a_warm_up_then_a_bounded_median() -> None:
    backend = FakeBackend('x')
    ticks = iter(np.arange(0.0, 100.0, 0.01))   # each clock read: 10 ms later
    median = time_backend(backend, frames=7, budget_s=0.6, clock=lambda: float(next(ticks)))
    assert backend.runs == 1 + 7 and median == pytest.approx(10.0)
    slow = FakeBackend('slow')
    ticks = iter(np.arange(0.0, 100.0, 1.0))    # 1 s per read: the budget stops it at 3 runs
    time_backend(slow, frames=7, budget_s=0.6, clock=lambda: float(next(ticks)))
    assert slow.runs == 1 + auto_choice.MIN_FRAMES


def test_the_fingerprint_names_this_machine() -> None:
    fingerprint = hardware_fingerprint()
    assert fingerprint['cpu'] and fingerprint['cpu'] != 'unknown CPU'
    assert 0 < fingerprint['cores'] <= (os.cpu_count() or 1)
    assert 'onnxruntime' in fingerprint['runtimes']
    assert isinstance(fingerprint['gpus'], list)


def test_auto_measures_ort_and_openvino_here_then_uses_the_cache(tmp_path: Path) -> None:
    pytest.importorskip('openvino', reason='openvino is not installed (requirements/dev.txt)')
    model = resolve_model('default', 320)
    options = BackendOptions(cache_dir=tmp_path, threads=1)
    first = select_backend('auto', model, options)
    try:
        assert first.backend.name in ('ort-cpu', 'openvino')
        assert 'measured now' in first.reason
        assert 'ort-cpu' in first.reason and 'openvino' in first.reason
        assert 'runs fp32, not the fp16 asked for' in first.reason
    finally:
        first.backend.close()
    second = select_backend('auto', model, options)
    try:
        assert second.backend.name == first.backend.name
        assert 'cached 20' in second.reason
    finally:
        second.backend.close()
    entries = json.loads((tmp_path / CACHE_NAME).read_text())['choices']
    (entry,) = entries.values()
    assert set(entry['timings_ms']) == {'ort-cpu', 'openvino'}
    assert all(ms > 0 for ms in entry['timings_ms'].values())
