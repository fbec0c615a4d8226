"""The robot's model store: content-addressed files, an atomic manifest, known-good versions."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from cobot_hybrid_perception.model_store import (
    MANIFEST,
    ModelStore,
    ModelUpdateError,
    file_sha256,
)
from cobot_hybrid_protocol.clock import SteppableClock
from cobot_hybrid_protocol.model_update import ModelRef


def make_version(folder: Path, version: int, size: int = 4096) -> tuple[Path, ModelRef]:
    """A file of ``size`` distinct bytes and its ModelRef (the store does not read ONNX)."""
    data = hashlib.sha256(str(version).encode()).digest() * (size // 32)
    path = folder / f'download-v{version}.onnx'
    path.write_bytes(data)
    ref = ModelRef(name='yolo11n-pose', version=version,
                   sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), imgsz=320)
    return path, ref


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    folder = tmp_path / 'downloads'
    folder.mkdir()
    return folder


def install(store: ModelStore, downloads: Path, version: int) -> ModelRef:
    """Add, swap in, confirm: what a successful install and its watch do to the store."""
    path, ref = make_version(downloads, version)
    store.add_file(path, ref)
    store.begin_trial(ref, version, 'r-1', 2, 60.0)
    store.confirm_trial()
    return ref


def test_a_new_store_starts_empty_and_writes_its_manifest(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / 'fleet')
    assert (store.known_good, store.active, store.trial, store.highest_revision) == \
        ((), None, None, 0)
    data = json.loads((tmp_path / 'fleet' / MANIFEST).read_text())
    assert data['format'] == 'cobot_hybrid.model_store/1' and data['active'] is None
    assert not store.problems


def test_a_file_is_stored_by_its_sha256_after_size_and_hash_checks(tmp_path: Path,
                                                                   downloads: Path) -> None:
    store = ModelStore(tmp_path / 'fleet')
    path, ref = make_version(downloads, 1)
    stored = store.add_file(path, ref)
    assert stored == tmp_path / 'fleet' / f'{ref.sha256}.onnx'
    assert file_sha256(stored) == (ref.sha256, ref.size_bytes)
    assert store.has(ref)
    assert store.add_file(None, ref) == stored          # the store's own copy, checked again
    assert not list((tmp_path / 'fleet').glob('.*.tmp'))


@pytest.mark.parametrize(('change', 'reason'), [
    ({'size_bytes': 4095}, 'size_mismatch'),
    ({'sha256': 'ab' * 32}, 'hash_mismatch'),
])
def test_a_file_that_is_not_the_signed_one_is_refused(tmp_path: Path, downloads: Path,
                                                      change: dict[str, object],
                                                      reason: str) -> None:
    store = ModelStore(tmp_path / 'fleet')
    path, ref = make_version(downloads, 1)
    bad = ModelRef(**{**ref.__dict__, **change})  # type: ignore[arg-type]
    with pytest.raises(ModelUpdateError) as caught:
        store.add_file(path, bad)
    assert caught.value.reason == reason
    assert not store.has(bad)
    assert [p.name for p in (tmp_path / 'fleet').iterdir()] == [MANIFEST]   # no leftovers


def test_a_missing_download_is_download_failed(tmp_path: Path, downloads: Path) -> None:
    store = ModelStore(tmp_path / 'fleet')
    _, ref = make_version(downloads, 1)
    for source in (downloads / 'absent.onnx', None):
        with pytest.raises(ModelUpdateError) as caught:
            store.add_file(source, ref)
        assert caught.value.reason == 'download_failed'


def test_known_good_keeps_the_newest_n_and_deletes_older_files(tmp_path: Path,
                                                               downloads: Path) -> None:
    store = ModelStore(tmp_path / 'fleet', keep=2)
    refs = [install(store, downloads, v) for v in (1, 2, 3)]
    assert [m.version for m in store.known_good] == [3, 2]
    assert store.active == refs[2] and store.trial is None
    assert not store.has(refs[0]) and store.has(refs[1]) and store.has(refs[2])
    reopened = ModelStore(tmp_path / 'fleet', keep=2)
    assert reopened.known_good == store.known_good and reopened.active == refs[2]


def test_a_trial_survives_a_restart_and_abandoning_it_returns_to_the_previous(
        tmp_path: Path, downloads: Path) -> None:
    clock = SteppableClock()
    store = ModelStore(tmp_path / 'fleet', clock=clock)
    v1 = install(store, downloads, 1)
    path, v2 = make_version(downloads, 2)
    store.add_file(path, v2)
    store.note_revision(7)
    store.begin_trial(v2, 7, 'r-2', 1, 30.0)
    reopened = ModelStore(tmp_path / 'fleet', clock=clock)
    trial = reopened.trial
    assert trial is not None and trial.model == v2 and trial.previous == v1
    assert (trial.revision, trial.rollout_id, trial.swapped_at, trial.max_restarts,
            trial.watch_s) == (7, 'r-2', clock.wall(), 1, 30.0)
    assert reopened.highest_revision == 7
    assert reopened.count_restart().restarts == 1   # type: ignore[union-attr]
    assert ModelStore(tmp_path / 'fleet').trial.restarts == 1   # type: ignore[union-attr]
    assert reopened.abandon_trial() == v1
    assert reopened.active == v1 and reopened.trial is None
    assert not reopened.has(v2)                      # a version that never passed is deleted


def test_a_file_being_checked_is_not_pruned_by_another_write(tmp_path: Path,
                                                             downloads: Path) -> None:
    store = ModelStore(tmp_path / 'fleet')
    path, candidate = make_version(downloads, 5)
    store.add_file(path, candidate)
    install(store, downloads, 1)                     # saves (and prunes) meanwhile
    assert store.has(candidate)
    store.release(candidate)                         # it failed its smoke check
    assert not store.has(candidate)


@pytest.mark.parametrize('content', [
    b'\x00\xffnot json at all',
    b'{"format": "cobot_hybrid.model_store/1"}',
    b'{"format": "cobot_hybrid.model_store/1", "known_good": [{"name": "x"}], "active": null,'
    b' "trial": null, "highest_revision": 3, "rebuilt_at": null}',
    b'[' * 5000,
])
def test_a_corrupt_manifest_is_moved_aside_and_rebuilt(tmp_path: Path, downloads: Path,
                                                       content: bytes,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    clock = SteppableClock()
    store = ModelStore(tmp_path / 'fleet', clock=clock)
    ref = install(store, downloads, 1)
    store.note_revision(9)
    (tmp_path / 'fleet' / MANIFEST).write_bytes(content)
    with caplog.at_level(logging.ERROR):
        rebuilt = ModelStore(tmp_path / 'fleet', clock=clock)
    assert (rebuilt.known_good, rebuilt.active, rebuilt.trial) == ((), None, None)
    assert rebuilt.rebuilt_at == clock.wall()        # older commands: superseded
    assert rebuilt.highest_revision == 0
    aside = list((tmp_path / 'fleet').glob(f'{MANIFEST}.corrupt-*'))
    assert len(aside) == 1 and aside[0].read_bytes() == content
    assert any('unreadable' in r.message and r.levelno == logging.ERROR for r in caplog.records)
    assert not rebuilt.has(ref)                      # nothing names it any more
    assert ModelStore(tmp_path / 'fleet').rebuilt_at == clock.wall()   # kept when reopened


def test_a_file_that_no_longer_hashes_to_its_name_is_dropped(tmp_path: Path,
                                                             downloads: Path) -> None:
    store = ModelStore(tmp_path / 'fleet')
    v1 = install(store, downloads, 1)
    v2 = install(store, downloads, 2)
    damaged = store.path_of(v2)
    damaged.write_bytes(b'x' * v2.size_bytes)        # same size, other bytes
    reopened = ModelStore(tmp_path / 'fleet')
    assert reopened.known_good == (v1,)
    assert reopened.active == v1                     # the newest sound version runs
    assert any('does not hash' in p for p in reopened.problems)
    store.path_of(v1).unlink()
    again = ModelStore(tmp_path / 'fleet')
    assert again.known_good == () and again.active is None   # the model parameter runs


def test_the_manifest_is_replaced_whole_or_not_at_all(tmp_path: Path, downloads: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = ModelStore(tmp_path / 'fleet')
    v1 = install(store, downloads, 1)
    before = (tmp_path / 'fleet' / MANIFEST).read_bytes()

    def power_cut(self: Path, target: object) -> None:
        raise OSError('power cut before the rename')
    monkeypatch.setattr(Path, 'replace', power_cut)
    with pytest.raises(OSError):
        store.note_revision(12)
    monkeypatch.undo()
    assert (tmp_path / 'fleet' / MANIFEST).read_bytes() == before
    reopened = ModelStore(tmp_path / 'fleet')
    assert reopened.active == v1 and reopened.highest_revision == 0 and not reopened.problems


def test_keep_must_be_a_small_positive_integer(tmp_path: Path) -> None:
    for keep in (0, -1, True, 1000):
        with pytest.raises(ValueError):
            ModelStore(tmp_path, keep=keep)
