"""``auto``: the fastest backend measured on this machine, cached with what makes it true.

Every candidate that loads is timed on a few frames of a fixed input tensor (a warm-up run,
then the median of up to :data:`FRAMES` runs within :data:`BUDGET_S` per candidate); the
fastest is kept, the others closed. The choice is written to a JSON file in the cache dir,
keyed by the model's hash, the precision, threads, devices and a hardware fingerprint (CPU
model, core count, GPU name, the runtimes' versions), so the next start with the same facts
builds the winner only. A cache file that cannot be read is ignored (the reason says so) and
rewritten. Nothing here knows a real runtime: the caller passes ``build``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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

__all__ = ['BUDGET_S', 'CACHE_NAME', 'CachedChoice', 'ChoiceCache', 'FRAMES', 'choice_key',
           'choose', 'hardware_fingerprint', 'time_backend']

CACHE_NAME = 'auto_backend.json'
CACHE_FORMAT = 'cobot_hybrid.auto-backend/1'
FRAMES = 7                     # timed runs per candidate at most (after one warm-up)
MIN_FRAMES = 3                 # ... and at least
BUDGET_S = 0.6                 # per candidate, warm-up excluded
MAX_CACHE_BYTES = 1 << 20
MAX_ENTRIES = 64
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

    def to_json(self) -> dict[str, Any]:
        """Plain dict for the cache file."""
        return {'backend': self.backend, 'timings_ms': self.timings_ms,
                'skipped': self.skipped, 'measured': self.measured, 'hardware': self.hardware}

    @classmethod
    def from_json(cls, doc: Any) -> CachedChoice:
        """Parse one entry (ValueError when it is not one)."""
        if not isinstance(doc, dict):
            raise ValueError('entry is not an object')
        timings, skipped = doc.get('timings_ms'), doc.get('skipped', {})
        if not isinstance(doc.get('backend'), str) or not isinstance(timings, dict) \
                or doc['backend'] not in timings or not isinstance(skipped, dict):
            raise ValueError('entry lacks backend/timings_ms')
        clean: dict[str, float] = {}
        for name, ms in timings.items():
            if not isinstance(ms, (int, float)) or isinstance(ms, bool) or not 0 < ms < 1e6:
                raise ValueError(f'timing of {name!r} is not a positive number')
            clean[str(name)] = float(ms)
        return cls(doc['backend'], clean, {str(k): str(v)[:500] for k, v in skipped.items()},
                   str(doc.get('measured', '?'))[:32], str(doc.get('hardware', '?'))[:200])


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
            doc = json.loads(raw.decode('utf-8'))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            self.problem = f'is not JSON ({exc})'
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
           ) -> tuple[InferenceBackend, str]:
    """Build the cached winner, or measure every candidate that loads; return it and why."""
    notes: list[str] = []
    cached = cache.get(key)
    if cache.problem:
        notes.append(f'choice cache {cache.path} {cache.problem}: ignored, rewritten')
    if cached is not None and cached.backend in candidates:
        try:
            return build(cached.backend), _reason(cached, f'cached {cached.measured}', notes)
        except BackendUnavailableError as exc:
            notes.append(f'the cached choice {cached.backend} no longer loads ({exc}): '
                         'measured again')
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
    choice = CachedChoice(winner, {k: round(v, 2) for k, v in timings.items()}, skipped,
                          today(), _hardware_words(fingerprint))
    failed = cache.put(key, choice)
    if failed:
        notes.append(failed)
    return loaded[winner], _reason(choice, 'measured now', notes)
