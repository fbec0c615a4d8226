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
        today: str = '2026-12-02', load: float = 0.2) -> tuple[FakeBackend, str]:
    backend, reason = choose(candidates, builder, key, ChoiceCache(cache_file), FINGERPRINT,
                             timer=timer_for(ms), today=lambda: today, load=lambda: load)
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
    (b'[' * 100_000 + b']' * 100_000, 'is refused (the file is nested deeper'),
    (b'{"format": "cobot_hybrid.auto-backend/1", "choices": {"k1": 1' + b'0' * 5000 + b'}}',
     'is refused (the file holds an integer of more than 4,300 digits'),
    (b'{"format": "cobot_hybrid.auto-backend/1", "choices": {"k1": {"backend": "cpu-a", '
     b'"timings_ms": {"cpu-a": NaN}}}}', 'is refused (NaN in the file'),
    (b'{"format": "cobot_hybrid.auto-backend/1", "choices": {"k1": {"backend": "cpu-a", '
     b'"timings_ms": {"cpu-a": "NaN"}}}}', 'has a bad entry'),
    (b'{"format": "cobot_hybrid.auto-backend/1", "choices": []}',
     'is not a cobot_hybrid.auto-backend/1 document'),
    (b'{"format": "cobot_hybrid.auto-backend/1", "choices": {"k1": {"backend": "cpu-a", '
     b'"timings_ms": {"cpu-a": 3}, "measured": {"a": 1}, "hardware": ["x"]}}}',
     'has a bad entry (measured and hardware must be strings)'),
    (json.dumps({'format': 'cobot_hybrid.auto-backend/1', 'choices': {'k1': {
        'backend': 'cpu-a', 'timings_ms': {'cpu-a': 3},
        'skipped': {f'k{i}': 'v' for i in range(100)}}}}).encode(),
     'has a bad entry (more than 32 backends'),
    (json.dumps({'format': 'cobot_hybrid.auto-backend/1', 'choices': {'k1': {
        'backend': 'cpu-a', 'timings_ms': {'cpu-a': 3}, 'skipped': {'x': 'v' * 5000}}}}
                ).encode(), 'is refused (a string of 5000 characters'),
    (json.dumps({'format': 'cobot_hybrid.auto-backend/1', 'choices': {'k1': {
        'backend': 'cpu-a', 'timings_ms': {'cpu-a': 3}, 'load_1min': -1}}}).encode(),
     'has a bad entry (load_1min and margin'),
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


def test_auto_measures_ort_and_openvino_here_then_uses_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip('openvino', reason='openvino is not installed (requirements/dev.txt)')
    # The real runtimes, timed; whether this shared machine is busy, or the two close, is not
    # what is tested here (the fake-backend tests above are): both checks off.
    monkeypatch.setattr(auto_choice, 'load_average', lambda: 0.0)
    monkeypatch.setattr(auto_choice, 'MIN_MARGIN', 0.0)
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


def test_a_busy_machine_s_measurement_is_used_not_cached(tmp_path: Path) -> None:
    cache = tmp_path / CACHE_NAME
    ms = {'gpu-rt': 9.0, 'cpu-a': 24.1, 'cpu-b': 44.0}
    backend, reason = run(cache, Builder(), ms, load=3.1)   # 4 cores: busy above 3.0
    assert backend.name == 'gpu-rt'
    assert '(measured now, not cached: load 3.1 on 4 cores)' in reason, reason
    assert not cache.exists()
    again = Builder()
    _, reason = run(cache, again, ms, load=2.9)   # measured again, now quiet: cached
    assert again.calls == ['gpu-rt', 'cpu-a', 'cpu-b'] and reason.endswith('(measured now)')
    entry = json.loads(cache.read_text())['choices']['k1']
    assert entry['load_1min'] == 2.9 and entry['margin'] == pytest.approx(24.1 / 9.0 - 1,
                                                                           abs=1e-3)
    _, reason = run(cache, Builder(), {}, load=9.0)   # a cached choice stays cached
    assert reason.endswith('(cached 2026-12-02)')


def test_a_winner_by_under_ten_percent_is_measured_again_next_start(tmp_path: Path) -> None:
    cache = tmp_path / CACHE_NAME
    ms = {'gpu-rt': 30.0, 'cpu-a': 20.0, 'cpu-b': 21.0}   # 5 % apart: noise decides
    backend, reason = run(cache, Builder(), ms)
    assert backend.name == 'cpu-a' and not cache.exists()
    assert 'not cached: margin 5 % over the runner-up (under 10 %)' in reason, reason
    _, both = run(cache, Builder(), ms, load=5.0)
    assert 'not cached: load 5.0 on 4 cores, margin 5 %' in both, both
    _, reason = run(cache, Builder(), {'gpu-rt': 30.0, 'cpu-a': 20.0, 'cpu-b': 22.0})
    assert reason.endswith('(measured now)') and cache.exists()   # 10 %: kept


def test_one_candidate_has_no_runner_up_and_an_unknown_load_does_not_block(
        tmp_path: Path) -> None:
    cache = tmp_path / CACHE_NAME
    _, reason = run(cache, Builder({'gpu-rt': 'x', 'cpu-b': 'y'}), {'cpu-a': 20.0},
                    load=float('nan'))
    assert reason.endswith('(measured now) (passed over gpu-rt: x; cpu-b: y)'), reason
    entry = json.loads(cache.read_text())['choices']['k1']
    assert entry['load_1min'] is None and entry['margin'] is None


def test_a_corrupt_cache_measured_busy_is_said_ignored_not_rewritten(tmp_path: Path) -> None:
    cache = tmp_path / CACHE_NAME
    cache.write_bytes(b'[1]')
    _, reason = run(cache, Builder(), {'gpu-rt': 9.0, 'cpu-a': 24.1, 'cpu-b': 44.0}, load=8.0)
    assert reason.endswith('is not a cobot_hybrid.auto-backend/1 document: ignored'), reason
    assert 'rewritten' not in reason and cache.read_bytes() == b'[1]'


def test_the_default_load_reader_is_the_1_minute_average() -> None:
    value = auto_choice.load_average()
    assert value != value or value >= 0   # NaN where the system has no load average
