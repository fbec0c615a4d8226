"""The model registry: every version of an edge model in MLflow, with its card and aliases.

The only module that imports MLflow, and only when a :class:`ModelRegistry` is made: the
planner package stays importable without it (MLflow stays off the robot; edge images do not
carry it). Two ways to open one:

* embedded (the default): ``sqlite:///<planner data dir>/registry.db`` with the artifacts in
  ``registry-artifacts/`` beside the database (any ``sqlite:///PATH`` likewise);
* a tracking server for a fleet: ``http://127.0.0.1:5000`` (``mlflow server
  --backend-store-uri sqlite:///... --artifacts-destination DIR``); the server keeps the
  artifacts, so no artifact root is given.

What one version is: a run of the experiment :data:`EXPERIMENT` holding the ONNX file
(``model/<file name>``) and ``card.json``, and a registered model version made from it whose
tags repeat the card (``sha256``, ``size_bytes``, ``imgsz``, ``task``, ``precision``,
``format``, ``classes`` and ``settings`` as JSON, ``metrics.*``, the whole ``card``). The
version number MLflow assigns is the card's version: the stored card carries it. Registering
a file whose sha256 a version of that name already has returns that version (its first card
stays). Engines built per GPU and TensorRT version are more artifacts of the same run
(``engines/<gpu>/trt-<version>/``), each with a tag holding its own sha256.

The aliases and their rules (:data:`ALIASES`):

* ``promote(v)``: ``champion`` -> v; ``previous`` -> the champion it replaces (if any);
  ``canary`` is removed if it pointed at v. Promoting the champion changes nothing.
* ``rollback()``: ``champion`` -> ``previous``; ``previous`` is then cleared (the version
  rolled back from is not known-good, and the one before is not recorded), so a second
  rollback without a promote in between is refused; the demoted version gets the tag
  ``rolled_back_at`` (unix s); ``canary`` is removed if it pointed at the new champion.
* ``set_canary(v)``: v must not be the champion.

Alias moves are separate MLflow calls, ordered so that a crash between them leaves a usable
state (``previous`` is written before ``champion`` moves). Two registrations of one file at
the same instant may make two versions (MLflow has no unique tag); the second finds the first
afterwards. Every MLflow error is a :class:`RegistryError` with MLflow's message.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_protocol.errors import PayloadError, SchemaError
from cobot_hybrid_protocol.limits import is_name, parse_json
from cobot_hybrid_protocol.model_card import (
    CARD_LIMITS,
    ModelCard,
    card_to_json,
    validate_card,
)
from cobot_hybrid_protocol.model_update import file_digest
from cobot_hybrid_protocol.paths import planner_data_dir

__all__ = ['ALIASES', 'CANARY', 'CHAMPION', 'EXPERIMENT', 'MLFLOW_REQUIREMENT', 'PREVIOUS',
           'Engine', 'ModelRegistry', 'RegistryError', 'VersionInfo', 'default_registry_uri']

EXPERIMENT = 'cobot_hybrid-models'
CHAMPION, CANARY, PREVIOUS = 'champion', 'canary', 'previous'
ALIASES = (CHAMPION, CANARY, PREVIOUS)
MLFLOW_REQUIREMENT = 'mlflow==3.17.2'
#: Registered names: they become file names (``<name>-v<version>.onnx``) wherever fetched.
NAME_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,127}')
_TRT_VERSION = re.compile(r'\d{1,4}(\.\d{1,6}){0,3}')
_ENGINE_TAG = 'engine.'
#: MLflow's own environment defaults, unless the caller set them: no telemetry, no progress
#: bars on stderr, no run links printed on stdout (it would break ``--json``), and a server
#: that does not answer fails in seconds, not minutes.
_MLFLOW_ENV = {'MLFLOW_DISABLE_TELEMETRY': 'true',
               'MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR': 'false',
               'MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT': 'true',
               'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '2',
               'MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR': '1',
               'MLFLOW_HTTP_REQUEST_TIMEOUT': '60'}


class RegistryError(PlannerError):
    """The registry cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class VersionInfo:
    """One registered version: its number, aliases and tags."""

    name: str
    version: int
    aliases: tuple[str, ...]
    tags: Mapping[str, str]
    created_at: float          # unix s
    run_id: str


@dataclass(frozen=True)
class Engine:
    """A TensorRT engine built from a version's ONNX for one GPU and TensorRT version."""

    gpu: str
    trt_version: str
    sha256: str
    size_bytes: int
    artifact: str              # its path inside the version's run


def default_registry_uri(data_dir: str = '') -> str:
    """``sqlite:///<planner data dir>/registry.db`` (``data_dir`` as the planner takes it)."""
    return f'sqlite:///{(planner_data_dir(data_dir) / "registry.db").resolve()}'


def _check_name(name: str) -> str:
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise RegistryError(f'model name {str(name)[:40]!r}: use letters, digits, ".", "_" '
                            'and "-" (at most 128, starting with a letter or digit), e.g. '
                            'yolo11n-pose')
    return name


def _check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(f'version {version!r}: a version number is 1 or more')
    return version


def _card_tags(card: ModelCard) -> dict[str, str]:
    """Return the version tags that repeat the card (all but ``card`` itself)."""
    data = card_to_json(card)
    model = data['model']
    return {'size_bytes': str(model['size_bytes']), 'imgsz': str(model['imgsz']),
            'task': model['task'], 'precision': model['precision'], 'format': model['format'],
            'classes': json.dumps(data['classes']),
            'settings': json.dumps(data['settings'], sort_keys=True),
            'created_at': repr(data['created_at']),
            **{f'metrics.{key}': json.dumps(value) for key, value in data['metrics'].items()}}


def _slug(text: str) -> str:
    return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')


class ModelRegistry:
    """Versions, cards, files and aliases of the edge models, in an MLflow registry."""

    def __init__(self, tracking_uri: str = '', artifact_root: Path | None = None) -> None:
        for key, value in _MLFLOW_ENV.items():
            os.environ.setdefault(key, value)
        try:
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException
        except ImportError:
            raise RegistryError('the model registry needs MLflow (cloud side only): pip '
                                f'install {MLFLOW_REQUIREMENT}') from None
        self._mlflow_error: type[Exception] = MlflowException
        uri = tracking_uri or default_registry_uri()
        if uri.startswith('sqlite:///'):
            database = Path(uri.removeprefix('sqlite:///'))
            if not database.is_absolute():
                raise RegistryError(f'registry {uri}: give an absolute path, '
                                    'sqlite:////abs/path/registry.db')
            try:
                database.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryError(f'registry folder {database.parent} cannot be made: '
                                    f'{exc.strerror}') from None
            root = Path(artifact_root) if artifact_root is not None \
                else database.parent / 'registry-artifacts'
            self.artifact_root: Path | None = root.expanduser().resolve()
        elif uri.startswith(('http://', 'https://')):
            if artifact_root is not None:
                raise RegistryError(f'registry {uri} is a server: it keeps the artifacts where '
                                    'its --artifacts-destination says; give no artifact root')
            self.artifact_root = None
        else:
            raise RegistryError(f'registry {uri[:80]!r}: use sqlite:////abs/path/registry.db '
                                '(embedded) or http://HOST:PORT (an mlflow server)')
        self.uri = uri
        self._client: Any = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self._experiment_id: str | None = None

    # --- plumbing ---------------------------------------------------------------------------

    def _wrapped(self, exc: Exception, what: str) -> RegistryError:
        lines = str(getattr(exc, 'message', exc)).strip().splitlines() or ['(no message)']
        return RegistryError(f'{what}: {lines[0][:500]} (registry {self.uri})')

    @contextmanager
    def _mlflow(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._mlflow_error as exc:
            raise self._wrapped(exc, what) from None

    def _experiment(self) -> str:
        if self._experiment_id is not None:
            return self._experiment_id
        with self._mlflow(f'experiment {EXPERIMENT}'):
            experiment = self._client.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                location = self.artifact_root.as_uri() if self.artifact_root else None
                self._experiment_id = str(self._client.create_experiment(
                    EXPERIMENT, artifact_location=location))
                return self._experiment_id
        if self.artifact_root is not None \
                and experiment.artifact_location != self.artifact_root.as_uri():
            raise RegistryError(f'experiment {EXPERIMENT} of {self.uri} keeps its artifacts in '
                                f'{experiment.artifact_location}, not {self.artifact_root}: '
                                'open it with that artifact root')
        self._experiment_id = str(experiment.experiment_id)
        return self._experiment_id

    def _model_version(self, name: str, version: int) -> Any:
        _check_name(name)
        _check_version(version)
        try:
            return self._client.get_model_version(name, str(version))
        except self._mlflow_error as exc:
            if getattr(exc, 'error_code', '') != 'RESOURCE_DOES_NOT_EXIST':
                raise self._wrapped(exc, f'{name} v{version}') from None
            known = ', '.join(str(v.version) for v in self.list(name)) or 'none'
            raise RegistryError(f'{name} has no version {version} in {self.uri} (versions: '
                                f'{known})') from None

    def _find_sha(self, name: str, sha256: str) -> Any | None:
        with self._mlflow(f'search {name}'):
            found = self._client.search_model_versions(
                f"name='{name}' and tags.sha256='{sha256}'")
        return min(found, key=lambda v: int(v.version)) if found else None

    # --- versions ---------------------------------------------------------------------------

    def register(self, model_file: Path, card: ModelCard) -> int:
        """Store the file and its card as a new version (or find the one that has it)."""
        name = _check_name(card.model.name)
        model_file = Path(model_file)
        try:
            sha256, size = file_digest(model_file)
        except OSError as exc:
            raise RegistryError(f'model file {model_file} cannot be read: {exc.strerror}') \
                from None
        if (size, sha256) != (card.model.size_bytes, card.model.sha256):
            raise RegistryError(
                f'{model_file} is not the file of its card: sha256 {sha256} ({size} bytes), '
                f'the card says {card.model.sha256} ({card.model.size_bytes} bytes); make the '
                f'card of this file with `cobot-hybrid model-card {model_file}`')
        existing = self._find_sha(name, sha256)
        if existing is not None:
            version = int(existing.version)
            if 'card' not in existing.tags:   # a registration interrupted before its card
                self._store_card(name, version, existing.run_id, card)
            return version
        experiment = self._experiment()
        with self._mlflow(f'register {model_file.name} as {name}'):
            try:
                self._client.create_registered_model(
                    name, description='an edge detector (cobot_hybrid model card in the '
                    'version tags)')
            except self._mlflow_error as exc:
                if getattr(exc, 'error_code', '') != 'RESOURCE_ALREADY_EXISTS':
                    raise
            run = self._client.create_run(experiment, run_name=f'{name}-{sha256[:12]}',
                                          tags={'cobot_hybrid.sha256': sha256})
        run_id = run.info.run_id
        try:
            with self._mlflow(f'register {model_file.name} as {name}'):
                self._client.log_artifact(run_id, str(model_file), 'model')
                created = self._client.create_model_version(
                    name, source=f'{run.info.artifact_uri}/model', run_id=run_id,
                    tags={'sha256': sha256, 'file_name': model_file.name,
                          **_card_tags(card)})
            version = int(created.version)
            self._store_card(name, version, run_id, card)
        except BaseException:
            with suppress(Exception):
                self._client.set_terminated(run_id, 'FAILED')
            raise
        with self._mlflow('close the run'):
            self._client.set_terminated(run_id)
        return version

    def _store_card(self, name: str, version: int, run_id: str, card: ModelCard) -> None:
        """Store the card with the version MLflow assigned: ``card`` tag, metrics, card.json.

        ``card`` is written last: a version with it is complete.
        """
        from mlflow.entities import Metric

        data = card_to_json(replace(card, model=replace(card.model, version=version)))
        stamp_ms = int(time.time() * 1e3)
        with self._mlflow(f'store the card of {name} v{version}'):
            self._client.log_batch(run_id, metrics=[
                Metric(key, float(value), stamp_ms, 0)
                for key, value in data['metrics'].items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)])
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / 'card.json'
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + '\n')
                self._client.log_artifact(run_id, str(path))
            for key, value in _card_tags(card).items():   # a registration completed later
                self._client.set_model_version_tag(name, str(version), key, value)
            self._client.set_model_version_tag(name, str(version), 'card',
                                               json.dumps(data, sort_keys=True))

    def list(self, name: str) -> tuple[VersionInfo, ...]:
        """Every version of ``name``, oldest first, with its aliases and tags."""
        _check_name(name)
        with self._mlflow(f'list {name}'):
            found = self._client.search_model_versions(f"name='{name}'")
        if not found:
            return ()
        by_version: dict[int, list[str]] = {}
        for alias, version in self.aliases(name).items():
            by_version.setdefault(version, []).append(alias)
        return tuple(sorted((VersionInfo(
            name=name, version=int(v.version),
            aliases=tuple(sorted(by_version.get(int(v.version), []))),
            tags=dict(v.tags), created_at=(v.creation_timestamp or 0) / 1e3,
            run_id=v.run_id or '') for v in found), key=lambda info: info.version))

    def card(self, name: str, version: int) -> ModelCard:
        """Return the card of one version (checked against the version's own tags)."""
        tags = dict(self._model_version(name, version).tags)
        label = f'{name} v{version}'
        if 'card' not in tags:
            raise RegistryError(f'{label} has no card (its registration was interrupted): '
                                'register the file again to complete it')
        try:
            card = validate_card(parse_json(tags['card'], CARD_LIMITS, f'the card of {label}'))
        except PayloadError as exc:
            raise RegistryError(f'the card of {label} is unreadable: {exc.detail}') from None
        except SchemaError as exc:
            raise RegistryError(f'the card of {label} is invalid: {exc}') from None
        if (card.model.name, card.model.version, card.model.sha256) != (
                name, version, tags.get('sha256')):
            raise RegistryError(f'the card of {label} names {card.model.label}, and the version '
                                f'has sha256 {tags.get("sha256")}: the registry was edited; '
                                'register the file again')
        return card

    def fetch(self, name: str, version: int, dest_dir: Path) -> Path:
        """Download the version's file to ``dest_dir/<name>-v<version>.onnx``, verified.

        The file is checked against the card (size, then sha256) before it takes its name;
        a file that does not match is deleted and refused, naming both digests.
        """
        card = self.card(name, version)
        model_version = self._model_version(name, version)
        file_name = dict(model_version.tags).get('file_name', '')
        if not file_name or '/' in file_name:
            raise RegistryError(f'{name} v{version} names no model file: register it again')
        target = Path(dest_dir) / f'{name}-v{version}.onnx'
        return self._download(model_version.run_id, f'model/{file_name}', target,
                              card.model.size_bytes, card.model.sha256, card.model.label)

    def _download(self, run_id: str, artifact: str, target: Path, size: int, sha256: str,
                  label: str) -> Path:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent, prefix='.fetch-') as folder:
                with self._mlflow(f'fetch {label}'):
                    path = Path(self._client.download_artifacts(run_id, artifact, folder))
                got_size = path.stat().st_size
                if got_size != size:
                    raise RegistryError(f'{label}: the artifact store holds {got_size} bytes, '
                                        f'the card says {size}: refused (sha256 should be '
                                        f'{sha256})')
                got, _ = file_digest(path)
                if got != sha256:
                    raise RegistryError(f'{label}: the artifact store holds sha256 {got}, the '
                                        f'card says {sha256}: refused, the file was changed')
                os.replace(path, target)
        except OSError as exc:
            raise RegistryError(f'cannot fetch {label} into {target.parent}: '
                                f'{exc.strerror or exc}') from None
        return target

    # --- aliases ----------------------------------------------------------------------------

    def aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` of ``name``."""
        _check_name(name)
        try:
            model = self._client.get_registered_model(name)
        except self._mlflow_error as exc:
            if getattr(exc, 'error_code', '') != 'RESOURCE_DOES_NOT_EXIST':
                raise self._wrapped(exc, f'aliases of {name}') from None
            raise RegistryError(f'no model {name} in {self.uri}: register one with '
                                '`cobot-hybrid model register FILE.onnx --card card.json`') \
                from None
        return {str(alias): int(version) for alias, version in dict(model.aliases).items()}

    def _point(self, name: str, alias: str, version: int) -> None:
        with self._mlflow(f'set {alias} of {name} to v{version}'):
            self._client.set_registered_model_alias(name, alias, str(version))

    def _clear(self, name: str, alias: str) -> None:
        with self._mlflow(f'remove {alias} of {name}'):
            self._client.delete_registered_model_alias(name, alias)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at a version: ``canary`` as :meth:`set_canary`; not the champion's."""
        if alias in (CHAMPION, PREVIOUS):
            raise RegistryError(f'{alias} moves with `promote` and `rollback` only (they keep '
                                'champion and previous consistent)')
        if alias == CANARY:
            self.set_canary(name, version)
            return
        self._model_version(name, version)
        self._point(name, alias, version)

    def promote(self, name: str, version: int) -> dict[str, int]:
        """Make ``version`` the champion; the champion it replaces becomes ``previous``."""
        self._model_version(name, version)
        current = self.aliases(name)
        champion = current.get(CHAMPION)
        if champion == version:
            return current
        if champion is not None:
            self._point(name, PREVIOUS, champion)     # first: a crash here loses nothing
        self._point(name, CHAMPION, version)
        if current.get(CANARY) == version:
            self._clear(name, CANARY)
        return self.aliases(name)

    def rollback(self, name: str, now_s: float | None = None) -> dict[str, int]:
        """Make ``previous`` the champion again and clear ``previous`` (see the module doc)."""
        current = self.aliases(name)
        previous = current.get(PREVIOUS)
        if previous is None:
            raise RegistryError(f'{name} has no previous champion to roll back to (promote '
                                'sets it, a rollback clears it): promote a version instead')
        demoted = current.get(CHAMPION)
        self._point(name, CHAMPION, previous)
        self._clear(name, PREVIOUS)
        if current.get(CANARY) == previous:
            self._clear(name, CANARY)
        if demoted is not None and demoted != previous:
            stamp = time.time() if now_s is None else now_s
            with self._mlflow(f'mark {name} v{demoted} rolled back'):
                self._client.set_model_version_tag(name, str(demoted), 'rolled_back_at',
                                                   repr(float(stamp)))
        return self.aliases(name)

    def set_canary(self, name: str, version: int) -> None:
        """Point ``canary`` at a candidate version (never the champion)."""
        self._model_version(name, version)
        if self.aliases(name).get(CHAMPION) == version:
            raise RegistryError(f'{name} v{version} is the champion: a canary is a candidate '
                                'that is not the champion yet')
        self._point(name, CANARY, version)

    def clear_canary(self, name: str) -> None:
        """Remove ``canary`` (a canary that failed, or was promoted by other means)."""
        if CANARY in self.aliases(name):
            self._clear(name, CANARY)

    # --- engines per GPU and TensorRT version ------------------------------------------------

    def add_engine(self, name: str, version: int, engine_file: Path, gpu: str,
                   trt_version: str) -> Engine:
        """Store an engine built from the version's ONNX for ``gpu`` and ``trt_version``.

        A second engine for the same GPU and TensorRT version replaces the first.
        """
        model_version = self._model_version(name, version)
        if not is_name(gpu) or not _slug(gpu):
            raise RegistryError(f'gpu {str(gpu)[:40]!r}: the GPU name as TensorRT reports it, '
                                'e.g. "NVIDIA Jetson Orin NX"')
        if not isinstance(trt_version, str) or _TRT_VERSION.fullmatch(trt_version) is None:
            raise RegistryError(f'trt_version {str(trt_version)[:40]!r}: a version like 10.3.0')
        engine_file = Path(engine_file)
        try:
            sha256, size = file_digest(engine_file)
        except OSError as exc:
            raise RegistryError(f'engine file {engine_file} cannot be read: {exc.strerror}') \
                from None
        folder = f'engines/{_slug(gpu)}/trt-{trt_version}'
        engine = Engine(gpu, trt_version, sha256, size, f'{folder}/{engine_file.name}')
        with self._mlflow(f'add an engine to {name} v{version}'):
            self._client.log_artifact(model_version.run_id, str(engine_file), folder)
            self._client.set_model_version_tag(
                name, str(version), f'{_ENGINE_TAG}{_slug(gpu)}.trt-{trt_version}',
                json.dumps({'gpu': gpu, 'trt_version': trt_version, 'sha256': sha256,
                            'size_bytes': size, 'artifact': engine.artifact}, sort_keys=True))
        return engine

    def engines(self, name: str, version: int) -> tuple[Engine, ...]:
        """Return the engines stored for a version, by GPU and TensorRT version."""
        tags = dict(self._model_version(name, version).tags)
        found = []
        for key, value in sorted(tags.items()):
            if not key.startswith(_ENGINE_TAG):
                continue
            try:
                data = parse_json(value, CARD_LIMITS, f'tag {key}')
                found.append(Engine(str(data['gpu']), str(data['trt_version']),
                                    str(data['sha256']), int(data['size_bytes']),
                                    str(data['artifact'])))
            except (PayloadError, KeyError, TypeError, ValueError):
                raise RegistryError(f'{name} v{version}: tag {key} is not an engine record: '
                                    'add the engine again') from None
        return tuple(found)

    def fetch_engine(self, name: str, version: int, gpu: str, trt_version: str,
                     dest_dir: Path) -> Path:
        """Download the engine for ``gpu`` and ``trt_version``, verified like :meth:`fetch`."""
        match = [e for e in self.engines(name, version)
                 if _slug(e.gpu) == _slug(gpu) and e.trt_version == trt_version]
        if not match:
            raise RegistryError(f'{name} v{version} has no engine for {gpu} with TensorRT '
                                f'{trt_version}: the robot builds it from the ONNX')
        engine = match[0]
        suffix = Path(engine.artifact).suffix or '.engine'
        target = Path(dest_dir) / f'{name}-v{version}-{_slug(gpu)}-trt{trt_version}{suffix}'
        return self._download(self._model_version(name, version).run_id, engine.artifact,
                              target, engine.size_bytes, engine.sha256,
                              f'the {gpu} engine of {name} v{version}')
