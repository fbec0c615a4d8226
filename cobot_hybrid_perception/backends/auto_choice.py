"""``auto``: the fastest backend measured on this machine, cached with what makes it true.

Every candidate that loads is timed on a few frames of a fixed input tensor (a warm-up run,
then the median of up to :data:`FRAMES` runs within :data:`BUDGET_S` per candidate); the
fastest is kept, the others closed. The choice is written to a JSON file in the cache dir,
keyed by the model's hash, the precision, threads, devices and a hardware fingerprint (CPU
model, core count, GPU name, the runtimes' versions), so the next start with the same facts
builds the winner only. A cache file that cannot be read (read within :data:`CACHE_LIMITS`:
size, depth, digits, finite numbers) is ignored (the reason says so) and rewritten.

A measurement is only as good as the machine was quiet: a choice measured while the 1-minute
load average was above :data:`BUSY_LOAD` x the usable cores, or whose winner was less than
:data:`MIN_MARGIN` faster than the runner-up, is used but not cached (measured again on the
next start), and the reason line says why. Nothing here knows a real runtime: the caller passes
``build``; the load is read by ``load`` (:func:`load_average` unless given).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from cobot_hybrid_perception.backends.base import InferenceBackend
from cobot_hybrid_perception.errors import BackendUnavailableError
from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.limits import Limits, is_number_in, parse_json

__all__ = ['BUDGET_S', 'BUSY_LOAD', 'CACHE_LIMITS', 'CACHE_NAME', 'CachedChoice', 'ChoiceCache',
           'FRAMES', 'MIN_MARGIN', 'choice_key', 'choose', 'hardware_fingerprint',
           'load_average', 'time_backend']

CACHE_NAME = 'auto_backend.json'
CACHE_FORMAT = 'cobot_hybrid.auto-backend/1'
FRAMES = 7                     # timed runs per candidate at most (after one warm-up)
MIN_FRAMES = 3                 # ... and at least
BUDGET_S = 0.6                 # per candidate, warm-up excluded
MAX_CACHE_BYTES = 1 << 20
MAX_ENTRIES = 64
MAX_TEXT = 500                 # characters of a skipped reason kept in the cache
#: The cache file: small and shallow ({format, choices: {key: {timings_ms: {name: ms}}}}).
CACHE_LIMITS = Limits(max_bytes=MAX_CACHE_BYTES, max_depth=6, max_string=4 * MAX_TEXT,
                      max_items=4 * MAX_ENTRIES, max_values=50_000)
MAX_CANDIDATES = 32            # names in one entry's timings_ms or skipped
BUSY_LOAD = 0.75               # load average per usable core above which nothing is cached
MIN_MARGIN = 0.10              # the winner must be this much faster than the runner-up
RUNTIMES = ('onnxruntime', 'onnxruntime-gpu', 'openvino', 'tensorrt', 'ai-edge-litert',
            'torch', 'ultralytics')


def _cpu_name() -> str:
    try:
        text = Path('/proc/cpuinfo').read_text(errors='replace')
    except OSError:
        text = ''
    for line in text.splitlines():
        key, _, value = line.partition(':')
        if key.strip() in ('model name', 'Model', 'Hardware') and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or 'unknown CPU'


def _gpu_names() -> list[str]:
    names = []
    for info in sorted(Path('/proc/driver/nvidia/gpus').glob('*/information')):
        try:
            for line in info.read_text(errors='replace').splitlines():
                if line.startswith('Model:'):
                    names.append(line.split(':', 1)[1].strip())
        except OSError:
            continue
    tegra = Path('/proc/device-tree/model')   # Jetson: the integrated GPU has no PCI entry
    if not names and tegra.is_file():
        try:
            names.append(tegra.read_text(errors='replace').strip('\x00\n '))
        except OSError:
            pass
    return names


def hardware_fingerprint() -> dict[str, Any]:
    """CPU model, usable cores, GPU names and installed runtime versions."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    runtimes = {}
    for name in RUNTIMES:
        try:
            runtimes[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return {'cpu': _cpu_name(), 'cores': cores, 'gpus': _gpu_names(), 'runtimes': runtimes}


def load_average() -> float:
    """Return the 1-minute load average (NaN where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def choice_key(model_digest: str, candidates: Sequence[str], precision: str, threads: int,
               devices: str, fingerprint: Mapping[str, Any]) -> str:
    """Hash of everything that can change which backend is fastest."""
    material = json.dumps({'model': model_digest, 'candidates': list(candidates),
                           'precision': precision, 'threads': threads, 'devices': devices,
                           'hardware': fingerprint}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class CachedChoice:
    """A measured choice: the winner, every candidate's median and why others were skipped."""

    backend: str
    timings_ms: dict[str, float]
    skipped: dict[str, str]
    measured: str              # ISO date of the measurement
    hardware: str              # CPU (and GPU) in words, for the reason line
    load: float | None = None  # 1-minute load average when it was measured
    margin: float | None = None   # runner-up / winner - 1 (None: no runner-up)

    def to_json(self) -> dict[str, Any]:
        """Plain dict for the cache file."""
        return {'backend': self.backend, 'timings_ms': self.timings_ms,
                'skipped': {k: v[:MAX_TEXT] for k, v in self.skipped.items()},
                'measured': self.measured, 'hardware': self.hardware,
                'load_1min': self.load, 'margin': self.margin}

    @classmethod
    def from_json(cls, doc: Any) -> CachedChoice:
        """Parse one entry (ValueError when it is not one)."""
        if not isinstance(doc, dict):
            raise ValueError('entry is not an object')
        timings, skipped = doc.get('timings_ms'), doc.get('skipped', {})
        if not isinstance(doc.get('backend'), str) or not isinstance(timings, dict) \
                or doc['backend'] not in timings or not isinstance(skipped, dict):
            raise ValueError('entry lacks backend/timings_ms')
        if len(timings) > MAX_CANDIDATES or len(skipped) > MAX_CANDIDATES or any(
                len(name) > 64 for name in (*timings, *skipped)):
            raise ValueError(f'more than {MAX_CANDIDATES} backends, or a name over 64 '
                             'characters')
        clean: dict[str, float] = {}
        for name, ms in timings.items():
            if not is_number_in(ms, 0.0, 1e6) or ms == 0:
                raise ValueError(f'timing of {name[:64]!r} is not a positive number')
            clean[name] = float(ms)
        if not all(isinstance(v, str) for v in skipped.values()):
            raise ValueError('a reason in skipped is not a string')
        measured, hardware = doc.get('measured', '?'), doc.get('hardware', '?')
        if not isinstance(measured, str) or not isinstance(hardware, str):
            raise ValueError('measured and hardware must be strings')
        load, margin = doc.get('load_1min'), doc.get('margin')
        if not (load is None or is_number_in(load, 0.0)) \
                or not (margin is None or is_number_in(margin, 0.0)):
            raise ValueError('load_1min and margin must be numbers >= 0 or null')
        return cls(doc['backend'], clean, {k: v[:MAX_TEXT] for k, v in skipped.items()},
                   measured[:32], hardware[:200], load, margin)


class ChoiceCache:
    """The JSON file of measured choices (read with a size limit, written atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problem: str | None = None   # why the file was ignored, if it was
        self._entries: dict[str, Any] = {}
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            with self.path.open('rb') as handle:
                raw = handle.read(MAX_CACHE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.problem = f'cannot be read ({exc.strerror})'
            return
        if len(raw) > MAX_CACHE_BYTES:
            self.problem = f'is over {MAX_CACHE_BYTES} bytes'
            return
        try:
            doc = parse_json(raw, CACHE_LIMITS, 'the file')
        except PayloadError as exc:
            what = 'is not JSON' if exc.reason in ('not_json', 'not_utf8') else 'is refused'
            self.problem = f'{what} ({exc.detail})'
            return
        if not isinstance(doc, dict) or doc.get('format') != CACHE_FORMAT \
                or not isinstance(doc.get('choices'), dict):
            self.problem = f'is not a {CACHE_FORMAT} document'
            return
        self._entries = doc['choices']

    def get(self, key: str) -> CachedChoice | None:
        """Look ``key`` up: None if absent or unreadable (``problem`` then says why)."""
        self._load()
        if key not in self._entries:
            return None
        try:
            return CachedChoice.from_json(self._entries[key])
        except ValueError as exc:
            self.problem = f'has a bad entry ({exc})'
            del self._entries[key]
            return None

    def put(self, key: str, choice: CachedChoice) -> str | None:
        """Store ``choice`` (the newest :data:`MAX_ENTRIES` kept); the reason if it failed."""
        self._load()
        self._entries.pop(key, None)
        self._entries[key] = choice.to_json()
        while len(self._entries) > MAX_ENTRIES:
            del self._entries[next(iter(self._entries))]
        doc = {'format': CACHE_FORMAT, 'choices': self._entries}
        staged = self.path.with_name(f'{self.path.name}.{os.getpid()}.part')
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            staged.write_text(json.dumps(doc, indent=1) + '\n', encoding='utf-8')
            os.replace(staged, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                staged.unlink(missing_ok=True)
            return f'choice not cached: {self.path} cannot be written ({exc.strerror})'
        return None


def time_backend(backend: InferenceBackend, frames: int = FRAMES, budget_s: float = BUDGET_S,
                 clock: Callable[[], float] = time.perf_counter) -> float:
    """Median milliseconds of ``backend.infer`` on a fixed tensor, after one warm-up run."""
    tensor = np.random.default_rng(0).random(backend.input_shape, dtype=np.float32)
    backend.infer(tensor)
    times: list[float] = []
    start = clock()
    while len(times) < frames and (len(times) < MIN_FRAMES or clock() - start < budget_s):
        t0 = clock()
        backend.infer(tensor)
        times.append(1e3 * (clock() - t0))
    return statistics.median(times)


def _hardware_words(fingerprint: Mapping[str, Any]) -> str:
    words = f'{fingerprint.get("cpu", "?")} ({fingerprint.get("cores", "?")} cores)'
    gpus = fingerprint.get('gpus') or []
    return words + (f', {", ".join(gpus)}' if gpus else '')


def _margin(timings: Mapping[str, float], winner: str) -> float | None:
    """How much slower the runner-up is than the winner (None when there is no runner-up)."""
    others = [ms for name, ms in timings.items() if name != winner]
    return min(others) / timings[winner] - 1.0 if others and timings[winner] > 0 else None


def _not_cached(choice: CachedChoice, cores: int) -> str:
    """Why a measurement is too noisy to keep ('' when it may be cached)."""
    why = []
    if choice.load is not None and choice.load > BUSY_LOAD * cores:
        why.append(f'load {choice.load:.1f} on {cores} cores')
    if choice.margin is not None and choice.margin < MIN_MARGIN:
        why.append(f'margin {100 * choice.margin:.0f} % over the runner-up '
                   f'(under {100 * MIN_MARGIN:.0f} %)')
    return ', '.join(why)


def _reason(choice: CachedChoice, when: str, notes: list[str]) -> str:
    best = choice.timings_ms[choice.backend]
    others = [f'{name} {ms:.1f} ms' for name, ms in sorted(choice.timings_ms.items(),
                                                           key=lambda item: item[1])
              if name != choice.backend]
    versus = ' vs ' + ', '.join(others) if others else ', the only one that loads here'
    text = f'auto picked {choice.backend}: {best:.1f} ms{versus} on {choice.hardware} ({when})'
    if choice.skipped:
        text += ' (passed over ' + '; '.join(f'{k}: {v}' for k, v in choice.skipped.items()) \
            + ')'
    return text + ''.join(f'; {note}' for note in notes)


def choose(candidates: Sequence[str], build: Callable[[str], InferenceBackend], key: str,
           cache: ChoiceCache, fingerprint: Mapping[str, Any],
           timer: Callable[[InferenceBackend], float] = time_backend,
           today: Callable[[], str] = lambda: datetime.now(timezone.utc).date().isoformat(),
           load: Callable[[], float] | None = None,
           ) -> tuple[InferenceBackend, str]:
    """Build the cached winner, or measure every candidate that loads; return it and why.

    ``load`` reads the 1-minute load average (default :func:`load_average`), before the
    candidates are timed: a busy machine's measurement is used, not cached.
    """
    notes: list[str] = []
    cached = cache.get(key)
    problem = f'choice cache {cache.path} {cache.problem}: ignored' if cache.problem else ''
    if cached is not None and cached.backend in candidates:
        try:
            return build(cached.backend), _reason(cached, f'cached {cached.measured}',
                                                  [problem] if problem else [])
        except BackendUnavailableError as exc:
            notes.append(f'the cached choice {cached.backend} no longer loads ({exc}): '
                         'measured again')
    load_1min = (load or load_average)()
    loaded: dict[str, InferenceBackend] = {}
    timings: dict[str, float] = {}
    skipped: dict[str, str] = {}
    try:
        for name in candidates:
            try:
                loaded[name] = build(name)
            except BackendUnavailableError as exc:
                skipped[name] = str(exc)
                continue
            timings[name] = timer(loaded[name])
    except BaseException:
        for backend in loaded.values():
            backend.close()
        raise
    if not loaded:
        raise BackendUnavailableError('no backend can run this model here: ' + '; '.join(
            f'{name}: {why}' for name, why in skipped.items()))
    winner = min(timings, key=lambda name: timings[name])
    for name, backend in loaded.items():
        if name != winner:
            backend.close()
    cores = fingerprint.get('cores')
    cores = cores if isinstance(cores, int) and cores > 0 else os.cpu_count() or 1
    margin = _margin(timings, winner)
    choice = CachedChoice(winner, {k: round(v, 2) for k, v in timings.items()}, skipped,
                          today(), _hardware_words(fingerprint),
                          round(load_1min, 2) if math.isfinite(load_1min) else None,
                          round(margin, 3) if margin is not None else None)
    noisy = _not_cached(choice, cores)
    if noisy:
        if problem:
            notes.insert(0, problem)
        return loaded[winner], _reason(choice, f'measured now, not cached: {noisy}', notes)
    failed = cache.put(key, choice)
    if problem:
        notes.insert(0, problem + ('' if failed else ', rewritten'))
    if failed:
        notes.append(failed)
    return loaded[winner], _reason(choice, 'measured now', notes)
