"""``cobot-hybrid worker run|status|dead|retry|build-index``: the offload worker's command line.

Every ``run`` flag is a :class:`~cobot_hybrid_planner.offload.worker.WorkerConfig` setting
(its default and help from there); job options are ``--option <job>.<name>=<value>``
(``--option snapshot.sizes=640`` runs the snapshot job at one size).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cobot_hybrid_planner.offload.job_ledger import LedgerError
from cobot_hybrid_planner.offload.worker import Worker, WorkerConfig, WorkerError, load_jobs
from cobot_hybrid_protocol.broker_auth import BrokerAuth
from cobot_hybrid_protocol.settings import specs

__all__ = ['register']

_AUTH = ('tls_ca', 'tls_cert', 'tls_key', 'username', 'password_file', 'password_env')
_RUN = ('group', 'worker_id', 'data_dir', 'concurrency', 'lease_s', 'job_timeout_s',
        'max_attempts',
        'retry_base_s', 'retry_max_s', 'max_upload_bytes', 'max_backlog_bytes', 'neighbours',
        'index_kind', 'status_period_s', 'metrics_port', 'metrics_host', 'advisory_key',
        'advisory_key_id', 'advisory_validity_s', 'broker_host', 'broker_port',
        'session_expiry_s')


def _flags(parser: argparse.ArgumentParser, names: tuple[str, ...], config: type) -> None:
    known = specs(config)
    for name in names:
        default, spec = known[name]
        parser.add_argument('--' + name.replace('_', '-'), dest=name, type=type(default),
                            default=default, help=spec.text())


def _job_options(pairs: list[str]) -> dict[str, dict[str, str]]:
    options: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition('=')
        job, dot, name = key.partition('.')
        if not sep or not dot or not job or not name:
            raise WorkerError(f'--option {pair!r} is not <job>.<name>=<value>')
        options.setdefault(job, {})[name] = value
    return options


def _config(args: argparse.Namespace) -> WorkerConfig:
    values = {name: getattr(args, name) for name in _RUN if hasattr(args, name)}
    if getattr(args, 'upload', None):
        values['uploads'] = tuple(args.upload)
    return WorkerConfig(**values)


class _Metrics(BaseHTTPRequestHandler):
    worker: Worker

    def do_GET(self) -> None:   # noqa: N802 (http.server's name)
        path = self.path.split('?')[0]
        if path == '/metrics':
            body, kind = self.worker.metrics_text().encode(), 'text/plain; version=0.0.4'
        elif path == '/status':   # what KEDA's metrics-api trigger reads (valueLocation)
            body = json.dumps(self.worker.last_status or self.worker.status()).encode()
            kind = 'application/json'
        else:
            self.send_error(404, 'GET /metrics or /status')
            return
        self.send_response(200)
        self.send_header('Content-Type', kind)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:   # noqa: A002
        return


def _cmd_run(args: argparse.Namespace) -> int:
    from cobot_hybrid_planner.mqtt_session import PahoSession

    cfg = _config(args)
    auth = BrokerAuth(**{name: getattr(args, name) for name in _AUTH})
    auth.check()
    options = _job_options(args.option)
    jobs = load_jobs(set(dict(p.partition('=')[::2] for p in cfg.uploads).values()), options)
    session = PahoSession(cfg.client_id, cfg.broker_host, cfg.broker_port,
                          cfg.session_expiry_s, auth)
    worker = Worker(cfg, session, jobs)
    server = None
    if cfg.metrics_port:
        handler = type('Metrics', (_Metrics,), {'worker': worker})
        server = ThreadingHTTPServer((cfg.metrics_host, cfg.metrics_port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker.start()
    print(f'worker {cfg.client_id} of group {cfg.group}: {", ".join(cfg.uploads)}; ledger '
          f'{cfg.data_path}', flush=True)
    try:
        while not stop.is_set():
            try:
                worker.step()
            except LedgerError as exc:   # locked or unwritable for now: try again
                print(f'worker: {exc}', file=sys.stderr, flush=True)
                stop.wait(1.0)
            stop.wait(0.05 if worker.busy < cfg.concurrency else 0.02)
    except KeyboardInterrupt:
        pass
    except WorkerError as exc:   # every job thread hangs: only a new process frees them
        print(f'cobot-hybrid worker run: {exc}', file=sys.stderr, flush=True)
        worker.close()
        os._exit(3)
    finally:
        if server is not None:
            server.shutdown()
        worker.close()
    return 0


def _ledger(args: argparse.Namespace) -> Any:
    from cobot_hybrid_planner.offload.job_ledger import JobLedger

    cfg = WorkerConfig(group=args.group, data_dir=args.data_dir)
    path = cfg.data_path / 'ledger.db'
    if not path.is_file():
        raise WorkerError(f'no ledger at {path}: give --data-dir (or --group) of a worker')
    return JobLedger(path)


def _cmd_status(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    try:
        stats = ledger.stats(time.time())
        if args.results:
            stats['results'] = ledger.results(limit=args.results)
    finally:
        ledger.close()
    print(json.dumps(stats, indent=2))
    return 0


def _cmd_dead(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    try:
        print(json.dumps(ledger.dead(args.limit), indent=2))
    finally:
        ledger.close()
    return 0


def _cmd_retry(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    try:
        print(f'{ledger.retry_dead(time.time())} dead job(s) requeued')
    finally:
        ledger.close()
    return 0


def _images(specs_: list[str]) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    for spec in specs_:
        path = Path(spec).expanduser()
        files = sorted(p for p in path.rglob('*') if p.suffix.lower() in
                       ('.jpg', '.jpeg', '.png')) if path.is_dir() else [path]
        for file in files:
            if not file.is_file():
                raise WorkerError(f'reference image {file} does not exist')
            found.append((file.stem, file.read_bytes()))
    if not found:
        raise WorkerError('no reference images: give files or folders of JPEG/PNG')
    return found


def _cmd_build_index(args: argparse.Namespace) -> int:
    from cobot_hybrid_planner.offload.similarity import IncidentIndex

    cfg = WorkerConfig(group=args.group, data_dir=args.data_dir)
    job = load_jobs({args.job}, _job_options(args.option))[args.job]
    embed = getattr(job, 'embed', None)
    if embed is None:
        raise WorkerError(f'job {args.job!r} has no embed(): it keeps no index')
    index: IncidentIndex | None = None
    added = 0
    try:
        for n, (name, data) in enumerate(_images(args.images)):
            for suffix, vector in embed(data, args.augment, args.seed + n):
                if index is None:
                    index = IncidentIndex(cfg.data_path / 'vectors.db', len(vector),
                                          cfg.index_kind)
                seq = n * (args.augment + 1) + (int(suffix[1:]) if suffix else 0) + 1
                added += index.add('reference', seq, f'{name}{suffix}', vector)
        total = len(index) if index is not None else 0
    finally:
        if index is not None:
            index.close()
    print(f'{added} reference vector(s) added; {total} in {cfg.data_path / "vectors.db"}')
    return 0


def register(subparsers: Any) -> None:
    """Add ``worker`` and its sub-commands."""
    worker = subparsers.add_parser('worker', help='cloud offload jobs on robot uploads')
    commands = worker.add_subparsers(dest='worker_command', required=True)
    run = commands.add_parser('run', help='run one worker replica (MQTT 5 shared '
                              'subscription; no ROS needed)')
    _flags(run, _RUN, WorkerConfig)
    _flags(run, _AUTH, BrokerAuth)
    run.add_argument('--upload', action='append', default=[],
                     help='kind=job (repeatable; default '
                     f'{",".join(specs(WorkerConfig)["uploads"][0])})')
    run.add_argument('--option', action='append', default=[],
                     help='job option <job>.<name>=<value> (repeatable)')
    run.set_defaults(func=_cmd_run)
    for name, func, text in (('status', _cmd_status, "the group's backlog, latency, done "
                              'and dead'), ('dead', _cmd_dead, 'the dead-letter record'),
                             ('retry', _cmd_retry, 'requeue every dead job')):
        cmd = commands.add_parser(name, help=text)
        _flags(cmd, ('group', 'data_dir'), WorkerConfig)
        if name == 'status':
            cmd.add_argument('--results', type=int, default=0, help='also show this many '
                             'results')
        if name == 'dead':
            cmd.add_argument('--limit', type=int, default=100)
        cmd.set_defaults(func=func)
    build = commands.add_parser('build-index', help='add reference images (and augmented '
                                'near-duplicates of them) to the incident index')
    build.add_argument('images', nargs='+', help='image files or folders (JPEG/PNG)')
    build.add_argument('--augment', type=int, default=0, help='augmented copies per image')
    build.add_argument('--seed', type=int, default=0)
    build.add_argument('--job', default='snapshot', help='the job whose embedding is used')
    build.add_argument('--option', action='append', default=[],
                       help='job option <job>.<name>=<value> (repeatable)')
    _flags(build, ('group', 'data_dir', 'index_kind'), WorkerConfig)
    build.set_defaults(func=_cmd_build_index)

