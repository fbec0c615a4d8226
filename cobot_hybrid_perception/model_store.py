"""The robot's own store of model versions: content-addressed files and a manifest. No ROS.

A folder (the detector's ``model_store`` parameter, by default ``<model cache>/fleet``)::

    <sha256>.onnx ...       every version the robot holds, named by the sha256 of its bytes
    manifest.json           what they are and which one runs (written atomically)

The manifest holds the known-good versions (``ModelRef`` JSON, newest first, the last
``keep`` of them: older files are deleted), the active one (``null``: the detector's ``model``
parameter, the factory model), the candidate on trial since its swap (its ref, the command's
revision and rollout, the wall time of the swap, the restarts counted since and the
acceptance's ``max_restarts`` and ``watch_s``, and the version it replaced) and the highest
revision applied: a command with a revision at most that is ``superseded``, across restarts.

Every write is a new file beside the manifest, fsynced, renamed over it, and the folder
fsynced, so a power cut leaves the old manifest or the new one, never half of one. A manifest
that cannot be read or does not follow its format is moved aside
(``manifest.json.corrupt-<unix time>``) and a new one started from nothing, with an error in
the log: the detector then runs its ``model`` parameter's file, and, like the bridge's replay
store, commands issued before the rebuild are refused as ``superseded`` (the revisions they
would be checked against were lost with the old manifest). A known-good or active file whose
bytes no longer hash to its name (a bad disk, an edit) is dropped, with a warning.

Errors: :class:`ModelUpdateError` (a :class:`~cobot_hybrid_perception.errors.PerceptionError`)
with ``reason``, one of the contract's ``FAILURE_REASONS`` (``size_mismatch``,
``hash_mismatch``, ``no_space``, ``download_failed``...), raised by :meth:`ModelStore.add_file`
and by the manager (:mod:`cobot_hybrid_perception.model_manager`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cobot_hybrid_perception.errors import PerceptionError
from cobot_hybrid_protocol.clock import SYSTEM_CLOCK, Clock
from cobot_hybrid_protocol.errors import PayloadError, SchemaError
from cobot_hybrid_protocol.limits import Limits, read_json_file
from cobot_hybrid_protocol.model_update import (
    FAILURE_REASONS,
    ModelRef,
    model_ref_to_json,
    validate_model_ref,
)
from cobot_hybrid_protocol.model_update import file_digest as file_sha256

__all__ = ['MANIFEST', 'MANIFEST_FORMAT', 'ModelStore', 'ModelUpdateError', 'Trial',
           'file_sha256']

MANIFEST = 'manifest.json'
MANIFEST_FORMAT = 'cobot_hybrid.model_store/1'
_MANIFEST_LIMITS = Limits(max_bytes=1024 * 1024, max_depth=6, max_string=4096,
                          max_items=1000, max_values=50_000, unique_keys=True)
_CHUNK = 1024 * 1024
_KEEP_MAX = 100
_LOG = logging.getLogger(__name__)


class ModelUpdateError(PerceptionError):
    """A step of a model update failed; ``reason`` is one of the contract's FAILURE_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f'{reason!r} is not one of {FAILURE_REASONS}')
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Trial:
    """The version swapped in by a command and not yet confirmed by ``watch_s`` of running."""

    model: ModelRef
    revision: int
    rollout_id: str
    swapped_at: float               # wall time of the swap [unix s]
    restarts: int
    max_restarts: int
    watch_s: float
    previous: ModelRef | None       # what ran before it (None: the model parameter's file)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):   # some filesystems cannot open a folder
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class ModelStore:
    """The versions a robot holds, which one runs, which one is on trial. Thread-safe."""

    def __init__(self, root: Path | str, keep: int = 3, clock: Clock = SYSTEM_CLOCK) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= _KEEP_MAX:
            raise ValueError(f'keep {keep!r} must be an integer in 1..{_KEEP_MAX}')
        self.root = Path(root).expanduser()
        self.keep = keep
        self.clock = clock
        self._lock = threading.RLock()
        self.known_good: tuple[ModelRef, ...] = ()
        self.active: ModelRef | None = None
        self.trial: Trial | None = None
        self.highest_revision = 0
        self.rebuilt_at: float | None = None      # when a corrupt manifest was replaced
        #: What opening the store found wrong (a rebuilt manifest, dropped files), for the log.
        self.problems: list[str] = []
        self._pending: set[str] = set()     # files added for a version not yet in the manifest
        self.root.mkdir(parents=True, exist_ok=True)
        self._open()

    @property
    def manifest_path(self) -> Path:
        """The manifest file."""
        return self.root / MANIFEST

    def path_of(self, model: ModelRef) -> Path:
        """Where the file of ``model`` lives in the store (whether it is there or not)."""
        return self.root / f'{model.sha256}.onnx'

    # --- reading -------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            data = read_json_file(self.manifest_path, _MANIFEST_LIMITS, 'the model manifest')
            self._load(data)
        except FileNotFoundError:
            self._save()
            return
        except (OSError, PayloadError, SchemaError, UnicodeDecodeError) as exc:
            self._rebuild(exc)
            return
        self._verify_files()

    def _load(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get('format') != MANIFEST_FORMAT:
            raise SchemaError(f'the manifest is not {MANIFEST_FORMAT}')
        fields = {'format', 'known_good', 'active', 'trial', 'highest_revision', 'rebuilt_at'}
        if set(data) != fields:
            raise SchemaError(f'the manifest must have exactly the fields {sorted(fields)}')
        known = data['known_good']
        if not isinstance(known, list):
            raise SchemaError('known_good must be a list')
        revision = data['highest_revision']
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise SchemaError('highest_revision must be an integer >= 0')
        rebuilt = data['rebuilt_at']
        if rebuilt is not None and (isinstance(rebuilt, bool)
                                    or not isinstance(rebuilt, (int, float))
                                    or not math.isfinite(rebuilt)):
            raise SchemaError('rebuilt_at must be null or a number')
        self.known_good = tuple(validate_model_ref(m, 'known_good[]') for m in known)
        self.active = None if data['active'] is None else validate_model_ref(data['active'],
                                                                             'active')
        self.trial = None if data['trial'] is None else _trial(data['trial'])
        self.highest_revision = revision
        self.rebuilt_at = None if rebuilt is None else float(rebuilt)

    def _rebuild(self, error: Exception) -> None:
        now = self.clock.wall()
        aside = self.manifest_path.with_name(f'{MANIFEST}.corrupt-{int(now)}')
        with contextlib.suppress(OSError):
            self.manifest_path.replace(aside)
        self.known_good, self.active, self.trial = (), None, None
        self.highest_revision = 0
        self.rebuilt_at = now
        self._save()
        message = (f'model manifest {self.manifest_path} is unreadable ({error}): moved aside '
                   f'to {aside.name} and started anew; the detector runs its model parameter '
                   'and commands issued before now are refused as superseded')
        self.problems.append(message)
        _LOG.error(message)

    def _verify_files(self) -> None:
        """Drop known-good and active versions whose file is missing or hashes otherwise."""
        def sound(model: ModelRef) -> bool:
            path = self.path_of(model)
            try:
                digest, size = file_sha256(path, model.size_bytes)
            except OSError as exc:
                self._problem(f'{model.label}: {path.name} cannot be read ({exc}): dropped')
                return False
            if (digest, size) != (model.sha256, model.size_bytes):
                self._problem(f'{model.label}: {path.name} does not hash to its name (sha256 '
                              f'{digest[:12]}, {size} bytes): dropped')
                return False
            return True

        trial = self.trial
        named = {*self.known_good, *(m for m in (self.active, trial and trial.previous) if m)}
        checked = {m.sha256: sound(m) for m in named}
        known = tuple(m for m in self.known_good if checked[m.sha256])
        active = self.active
        if active is not None and not checked[active.sha256]:
            self.trial = None        # what was on trial is gone: nothing to watch
            previous = trial.previous if trial is not None else None
            active = previous if previous is not None and checked[previous.sha256] else \
                (known[0] if known else None)
            self._problem(f'running {active.label if active else "the model parameter"} '
                          'instead')
        if (known, active) != (self.known_good, self.active):
            self.known_good, self.active = known, active
            self._save()

    def _problem(self, message: str) -> None:
        self.problems.append(message)
        _LOG.warning(message)

    # --- files ---------------------------------------------------------------------------------

    def has(self, model: ModelRef) -> bool:
        """Whether the store holds the file of ``model`` with its size (hash: :meth:`add_file`)."""
        path = self.path_of(model)
        return path.is_file() and path.stat().st_size == model.size_bytes

    def add_file(self, source: Path | None, model: ModelRef) -> Path:
        """Copy ``source`` into the store as ``model`` after checking size and sha256.

        ``source`` None: the store's own copy is checked again. Raises ModelUpdateError
        (``download_failed``, ``size_mismatch``, ``hash_mismatch``, ``no_space``).
        """
        target = self.path_of(model)
        with self._lock:
            self._pending.add(model.sha256)   # not pruned until begin_trial or release
        if source is None or Path(source) == target:
            if not target.is_file():
                raise ModelUpdateError('download_failed', f'no file given for {model.label} '
                                       'and the store holds none')
            self._check(target, model)
            return target
        source = Path(source)
        try:
            size = source.stat().st_size
        except OSError as exc:
            raise ModelUpdateError('download_failed', f'the fetched file {source} cannot be '
                                   f'read: {exc}') from None
        if size != model.size_bytes:
            raise ModelUpdateError('size_mismatch', f'{source.name} has {size} bytes, the '
                                   f'signed size is {model.size_bytes}')
        tmp = self.root / f'.{model.sha256}.{os.getpid()}.{threading.get_ident()}.tmp'
        try:
            digest = hashlib.sha256()
            copied = 0
            with open(source, 'rb') as src, open(tmp, 'wb') as dst:
                while chunk := src.read(min(_CHUNK, model.size_bytes + 1 - copied)):
                    digest.update(chunk)
                    dst.write(chunk)
                    copied += len(chunk)
                    if copied > model.size_bytes:
                        break
                dst.flush()
                os.fsync(dst.fileno())
            if copied != model.size_bytes:
                raise ModelUpdateError('size_mismatch', f'{source.name} gave {copied} bytes '
                                       f'while copied, the signed size is {model.size_bytes}')
            if digest.hexdigest() != model.sha256:
                raise ModelUpdateError('hash_mismatch', f'{source.name} has sha256 '
                                       f'{digest.hexdigest()[:16]}..., the signed one is '
                                       f'{model.sha256[:16]}...')
            tmp.replace(target)
            _fsync_dir(self.root)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ModelUpdateError('no_space', f'no space left in {self.root} for '
                                       f'{model.size_bytes} bytes') from None
            raise ModelUpdateError('download_failed', f'copying {source} into {self.root} '
                                   f'failed: {exc}') from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return target

    @staticmethod
    def _check(path: Path, model: ModelRef) -> None:
        try:
            digest, size = file_sha256(path, model.size_bytes)
        except OSError as exc:
            raise ModelUpdateError('download_failed', f'{path} cannot be read: {exc}') from None
        if size != model.size_bytes:
            raise ModelUpdateError('size_mismatch', f'{path.name} has {size} bytes, the '
                                   f'signed size is {model.size_bytes}')
        if digest != model.sha256:
            raise ModelUpdateError('hash_mismatch', f'{path.name} has sha256 {digest[:16]}..., '
                                   f'the signed one is {model.sha256[:16]}...')

    # --- state ---------------------------------------------------------------------------------

    def find_known(self, sha256: str) -> ModelRef | None:
        """Return the known-good version with this sha256, if the store keeps it."""
        with self._lock:
            return next((m for m in self.known_good if m.sha256 == sha256), None)

    def release(self, model: ModelRef) -> None:
        """Let a version added with :meth:`add_file` go (it failed a check): prunable now."""
        with self._lock:
            self._pending.discard(model.sha256)
            self.prune()

    def note_revision(self, revision: int) -> None:
        """Remember that a command of ``revision`` was accepted (replay protection)."""
        with self._lock:
            if revision > self.highest_revision:
                self.highest_revision = revision
                self._save()

    def begin_trial(self, model: ModelRef, revision: int, rollout_id: str, max_restarts: int,
                    watch_s: float) -> Trial:
        """Make ``model`` (swapped in now) active and on trial; what ran before is kept.

        A version still on trial when the next install comes ran without a crash loop until
        the cloud replaced it: it becomes known-good and the one a rollback returns to.
        """
        with self._lock:
            if self.trial is not None:
                ran = self.trial.model
                self.known_good = (ran, *(m for m in self.known_good
                                         if m.sha256 != ran.sha256))[:self.keep]
            previous = self.active
            self.trial = Trial(model, revision, rollout_id, self.clock.wall(), 0, max_restarts,
                               watch_s, previous)
            self.active = model
            self._pending.discard(model.sha256)
            self._save()
            return self.trial

    def count_restart(self) -> Trial | None:
        """Count one start of the detector while a version is on trial; return the trial."""
        with self._lock:
            if self.trial is None:
                return None
            self.trial = replace(self.trial, restarts=self.trial.restarts + 1)
            self._save()
            return self.trial

    def confirm_trial(self) -> ModelRef | None:
        """Make the version on trial known-good (it ran ``watch_s`` without a crash loop)."""
        with self._lock:
            if self.trial is None:
                return None
            model = self.trial.model
            self.known_good = (model, *(m for m in self.known_good
                                        if m.sha256 != model.sha256))[:self.keep]
            self.trial = None
            self._save()
            return model

    def abandon_trial(self) -> ModelRef | None:
        """Give up the version on trial (crash loop, broken file): activate the previous one.

        Returns what is active now (None: the detector's ``model`` parameter).
        """
        with self._lock:
            if self.trial is not None:
                previous = self.trial.previous
                if previous is not None and previous.sha256 not in \
                        {m.sha256 for m in self.known_good} and not self.has(previous):
                    previous = self.known_good[0] if self.known_good else None
                self.active = previous
                self.trial = None
                self._save()
            return self.active

    def forget(self, model: ModelRef) -> tuple[ModelRef, ...]:
        """Drop ``model`` from the known-good versions (it no longer loads); return the rest."""
        with self._lock:
            self.known_good = tuple(m for m in self.known_good if m.sha256 != model.sha256)
            self._save()
            return self.known_good

    def activate(self, model: ModelRef | None) -> None:
        """Run ``model`` from now on (a commanded rollback); a trial in progress ends."""
        with self._lock:
            self.active = model
            self.trial = None
            self._save()

    def _referenced(self) -> set[str]:
        names = {m.sha256 for m in self.known_good} | self._pending
        for model in (self.active, *((self.trial.model, self.trial.previous)
                                     if self.trial else ())):
            if model is not None:
                names.add(model.sha256)
        return names

    def prune(self) -> list[Path]:
        """Delete the files no version the manifest names refers to; return them."""
        with self._lock:
            keep = self._referenced()
            removed = []
            for path in self.root.iterdir():
                stale = (path.suffix == '.onnx' and path.stem not in keep) \
                    or (path.name.startswith('.') and path.name.endswith('.tmp'))
                if stale and path.is_file():
                    with contextlib.suppress(OSError):
                        path.unlink()
                        removed.append(path)
            return removed

    def _save(self) -> None:
        trial = self.trial
        data = {'format': MANIFEST_FORMAT,
                'known_good': [model_ref_to_json(m) for m in self.known_good],
                'active': None if self.active is None else model_ref_to_json(self.active),
                'trial': None if trial is None else {
                    'model': model_ref_to_json(trial.model), 'revision': trial.revision,
                    'rollout_id': trial.rollout_id, 'swapped_at': trial.swapped_at,
                    'restarts': trial.restarts, 'max_restarts': trial.max_restarts,
                    'watch_s': trial.watch_s,
                    'previous': None if trial.previous is None
                    else model_ref_to_json(trial.previous)},
                'highest_revision': self.highest_revision, 'rebuilt_at': self.rebuilt_at}
        tmp = self.manifest_path.with_name(f'.{MANIFEST}.{os.getpid()}.tmp')
        with open(tmp, 'w', encoding='utf-8') as handle:
            json.dump(data, handle, indent=1, allow_nan=False)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.manifest_path)
        _fsync_dir(self.root)
        self.prune()

    def free_bytes(self) -> int:
        """Free space where the store lives [bytes]."""
        return shutil.disk_usage(self.root).free


def _trial(data: Any) -> Trial:
    fields = {'model', 'revision', 'rollout_id', 'swapped_at', 'restarts', 'max_restarts',
              'watch_s', 'previous'}
    if not isinstance(data, dict) or set(data) != fields:
        raise SchemaError(f'trial must have exactly the fields {sorted(fields)}')
    for name in ('revision', 'restarts', 'max_restarts'):
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SchemaError(f'trial.{name} must be an integer >= 0')
    for name in ('swapped_at', 'watch_s'):
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise SchemaError(f'trial.{name} must be a number')
    if not isinstance(data['rollout_id'], str) or len(data['rollout_id']) > 128:
        raise SchemaError('trial.rollout_id must be text')
    return Trial(validate_model_ref(data['model'], 'trial.model'), data['revision'],
                 data['rollout_id'], float(data['swapped_at']), data['restarts'],
                 data['max_restarts'], float(data['watch_s']),
                 None if data['previous'] is None
                 else validate_model_ref(data['previous'], 'trial.previous'))
