"""Planner sub-commands of ``cobot-hybrid``.

* ``plan ORDERS.yaml --site SITE.yaml [--json]``: plan offline, print missions and cost;
* ``serve --site SITE.yaml --key KEY.pem [--fleet F --replica-id ID]``: the cloud planner
  without ROS (a container next to the broker); with ``--fleet``, one of several replicas;
* ``submit ORDERS.yaml [--site SITE.yaml]``: hand a work order to the planner over the broker
  (the ``orders`` role); checked first, and the broker's answer said plainly;
* ``planner-health [--data-dir DIR]``: the container health check: the state folder takes
  writes and the fleet store and ledger pass SQLite's quick check;
* ``model register|list|show|promote|rollback|canary|fetch``: the model registry (MLflow,
  :mod:`cobot_hybrid_planner.model_registry`; docs/models.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.service import PlannerConfig
from cobot_hybrid_protocol.errors import BrokerAuthError
from cobot_hybrid_protocol.settings import specs

__all__ = ['ERRORS', 'register']

#: What the planner sub-commands raise for bad input (one line, exit status 2).
ERRORS = (PlannerError, BrokerAuthError)


def _cmd_plan(args: argparse.Namespace) -> int:
    from cobot_hybrid_planner.orders import validate_orders
    from cobot_hybrid_planner.planning import FleetRobot, plan
    from cobot_hybrid_planner.site import load_site
    from cobot_hybrid_protocol.errors import PayloadError
    from cobot_hybrid_protocol.limits import parse_yaml

    site = load_site(Path(args.site))
    try:
        data = parse_yaml(Path(args.orders).read_bytes(), what=f'orders file {args.orders}')
    except OSError as exc:
        raise PlannerError(f'orders file {args.orders} cannot be read: {exc.strerror}') \
            from None
    except PayloadError as exc:
        raise PlannerError(exc.detail) from None
    tasks, rejected = validate_orders(data, site)
    robots = [FleetRobot(r.robot_id, r.capabilities, r.start) for r in site.robots.values()]
    result = plan(tasks, robots, site, time_limit_s=args.time_limit)
    task_map = {t.task_id: t for t in tasks}
    missions = {
        robot_id: [{'task_id': t, 'type': task_map[t].type, 'station': task_map[t].station,
                    'start_s': round(result.assignments[t].start_s, 1),
                    'end_s': round(result.assignments[t].end_s, 1),
                    'pose': {'x': site.stations[task_map[t].station].x,
                             'y': site.stations[task_map[t].station].y,
                             'yaw': site.stations[task_map[t].station].yaw}}
                   for t in order]
        for robot_id, order in result.orders.items()}
    report = {'method': result.method, 'makespan_s': round(result.makespan_s, 1),
              'weighted_lateness_s': round(result.weighted_lateness_s, 1),
              'cost': round(result.cost, 1), 'missions': missions,
              'rejected': {r.task_id: r.reason for r in rejected},
              'unassigned': result.unassigned, 'notes': result.notes}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f'{result.method}: makespan {result.makespan_s:.0f} s, weighted lateness '
          f'{result.weighted_lateness_s:.0f} s, cost {result.cost:.0f}')
    for robot_id, items in missions.items():
        steps = ', '.join(f'{i["task_id"]}@{i["station"]} {i["start_s"]:.0f}-{i["end_s"]:.0f}s'
                          for i in items)
        print(f'  {robot_id}: {steps or "(idle)"}')
    not_planned = {**{r.task_id: r.reason for r in rejected}, **result.unassigned}
    for task_id, reason in not_planned.items():
        print(f'  not planned: {task_id}: {reason}')
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from cobot_hybrid_planner.service import (
        PlannerConfig,
        PlannerService,
        load_orders_file,
        load_private_key,
    )
    from cobot_hybrid_planner.site import load_site

    params = PlannerConfig(site_file=args.site, private_key_file=args.key, key_id=args.key_id,
                           broker_host=args.host, broker_port=args.port,
                           client_id=args.replica_id, data_dir=args.data_dir,
                           plan_time_limit_s=args.time_limit, fleet_id=args.fleet,
                           lease_s=args.lease_s, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                           tls_key=args.tls_key, username=args.username,
                           password_file=args.password_file, password_env=args.password_env,
                           model_registry=args.model_registry)
    params.require_files()
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    service = PlannerService(params, load_site(Path(args.site)),
                             load_private_key(Path(args.key)))
    if args.orders:
        service.add_orders(load_orders_file(Path(args.orders)))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    print(f'planner {args.replica_id} serving {args.host}:{args.port}'
          + (f' as a replica of fleet {args.fleet}' if args.fleet else ''), flush=True)
    try:
        while not stop.wait(params.step_period_s):
            service.step()
    finally:
        service.stop()
    return 0


_AUTH = ('tls_ca', 'tls_cert', 'tls_key', 'username', 'password_file', 'password_env')
_NOT_AUTHORIZED, _NO_SUBSCRIBERS = 0x87, 0x10


def _cmd_submit(args: argparse.Namespace) -> int:
    import uuid

    from cobot_hybrid_planner.mqtt_session import publish_once
    from cobot_hybrid_planner.orders import ORDERS_SCHEMA, validate_orders
    from cobot_hybrid_planner.service import load_orders_file
    from cobot_hybrid_planner.site import load_site
    from cobot_hybrid_protocol.topics import ORDERS_TOPIC

    data = load_orders_file(Path(args.orders))
    if not isinstance(data, dict) or data.get('schema') != ORDERS_SCHEMA:
        raise PlannerError(f'{args.orders} is not a work order: its schema must be '
                           f'{ORDERS_SCHEMA!r} (see config/examples/orders.yaml)')
    if args.site:
        import sys

        accepted, rejected = validate_orders(data, load_site(Path(args.site)))
        reasons = '; '.join(f'{r.task_id}: {r.reason}' for r in rejected)
        if rejected and not accepted:
            raise PlannerError(f'the planner would reject every task: {reasons}')
        if rejected:
            print(f'warning: the planner will reject {reasons}', file=sys.stderr)
    params = PlannerConfig(broker_host=args.host, broker_port=args.port,
                           **{name: getattr(args, name) for name in _AUTH})
    try:
        code = publish_once(args.host, args.port, params.auth,
                            f'orders-{uuid.uuid4().hex[:8]}', ORDERS_TOPIC,
                            json.dumps(data).encode())
    except (ConnectionError, TimeoutError) as exc:
        raise PlannerError(str(exc)) from None
    if code == _NOT_AUTHORIZED:
        raise PlannerError('the broker refused the order (0x87 not authorized): submit with '
                           "the orders role's certificate or user")
    if code == _NO_SUBSCRIBERS:
        raise PlannerError('no planner subscribes to the orders (0x10): the order was '
                           'dropped; start a planner, then submit again')
    if code >= 0x80:
        raise PlannerError(f'the broker refused the order (reason 0x{code:02x})')
    tasks = data.get('tasks')
    count = len(tasks) if isinstance(tasks, list) else 0
    print(f'submitted order {data.get("order_id")} ({count} tasks) to {args.host}:{args.port}')
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    import sqlite3
    import tempfile

    folder = PlannerConfig(data_dir=args.data_dir).data_path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise PlannerError(f'state folder {folder} takes no writes: {exc.strerror}') from None
    for name in ('fleet.db', 'ledger.db'):
        path = folder / name
        if not path.exists():
            continue
        try:
            db = sqlite3.connect(f'file:{path}?mode=ro', uri=True, timeout=5.0)
            try:
                verdict = db.execute('PRAGMA quick_check').fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise PlannerError(f'{path} cannot be checked: {exc}') from None
        if verdict != 'ok':
            raise PlannerError(f'{path} is corrupt: {verdict}')
    print(f'healthy: {folder}')
    return 0


def _flag(parser: Any, flag: str, name: str, **kwargs: Any) -> None:
    """Add ``flag`` for the setting ``name`` of PlannerConfig: its default and its text."""
    default, spec = specs(PlannerConfig)[name]
    parser.add_argument(flag, type=type(default), default=default, help=spec.text(), **kwargs)


# --- the model registry (cobot_hybrid_planner.model_registry; MLflow, cloud side only) ---------

def _registry(args: argparse.Namespace) -> Any:
    import os

    from cobot_hybrid_planner.model_registry import ModelRegistry, default_registry_uri

    os.environ.setdefault('MLFLOW_LOGGING_LEVEL', 'WARNING')   # no INFO lines on migrations
    return ModelRegistry(args.registry or default_registry_uri())


def _aliases_line(aliases: dict[str, int]) -> str:
    return ', '.join(f'{alias} v{version}' for alias, version in sorted(aliases.items())) \
        or 'no aliases'


def _cmd_model_register(args: argparse.Namespace) -> int:
    from cobot_hybrid_planner.model_registry import RegistryError
    from cobot_hybrid_protocol.errors import SchemaError
    from cobot_hybrid_protocol.model_card import read_card

    if not args.card:
        raise RegistryError(f'a version needs its card: make it with `cobot-hybrid model-card '
                            f'{args.file} --name {args.name} --version 1 --champion '
                            'CHAMPION.onnx --out card.json`, then give --card card.json')
    try:
        card = read_card(Path(args.card))
    except OSError as exc:
        raise RegistryError(f'model card {args.card} cannot be read: {exc.strerror}') from None
    except SchemaError as exc:
        raise RegistryError(str(exc)) from None
    if card.model.name != args.name:
        raise RegistryError(f'the card {args.card} is for {card.model.name!r}, not '
                            f'{args.name!r}: make the card with --name {args.name}')
    registry = _registry(args)
    version = registry.register(Path(args.file), card)
    if args.json:
        print(json.dumps({'name': args.name, 'version': version, 'sha256': card.model.sha256,
                          'registry': registry.uri}))
        return 0
    note = '' if version == card.model.version else \
        f' (the card said v{card.model.version}: the registry numbers the versions)'
    print(f'{args.name} v{version}: {card.model.sha256[:12]}, {card.model.size_bytes} bytes, '
          f'in {registry.uri}{note}')
    return 0


def _tag_value(text: str) -> Any:
    """Decode a metric tag (JSON): a number, a string, or None (also for a garbled tag)."""
    from cobot_hybrid_protocol.errors import PayloadError
    from cobot_hybrid_protocol.limits import parse_json

    try:
        value = parse_json(text, what='a version tag')
    except PayloadError:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    return value


def _version_json(info: Any) -> dict[str, Any]:
    tags = info.tags
    metrics = {key.removeprefix('metrics.'): _tag_value(value)
               for key, value in tags.items() if key.startswith('metrics.')}
    return {'version': info.version, 'aliases': list(info.aliases),
            'sha256': tags.get('sha256'), 'size_bytes': int(tags.get('size_bytes', 0)),
            'imgsz': int(tags.get('imgsz', 0)), 'task': tags.get('task'),
            'precision': tags.get('precision'), 'metrics': metrics,
            'registered_at': info.created_at,
            'rolled_back_at': float(tags['rolled_back_at']) if 'rolled_back_at' in tags
            else None}


def _cmd_model_list(args: argparse.Namespace) -> int:
    import time

    registry = _registry(args)
    rows = [_version_json(info) for info in registry.list(args.name)]
    if args.json:
        print(json.dumps({'name': args.name, 'versions': rows}, indent=2))
        return 0
    if not rows:
        print(f'{args.name}: no versions in {registry.uri}')
        return 0
    header = ('version', 'aliases', 'sha256', 'imgsz', 'task', 'precision', 'agreement',
              'p50 ms', 'p99 ms', 'registered')
    table = [header]
    for row in rows:
        m = row['metrics']
        agreement = m.get('agreement')
        p50, p99 = m.get('latency_p50_ms'), m.get('latency_p99_ms')
        aliases = ','.join(row['aliases'] + (['rolled back'] if row['rolled_back_at'] else []))
        table.append((str(row['version']), aliases or '-', str(row['sha256'])[:12],
                      str(row['imgsz']), str(row['task']), str(row['precision']),
                      f'{agreement:.3f}' if isinstance(agreement, (int, float)) else '-',
                      f'{p50:.1f}' if isinstance(p50, (int, float)) else '-',
                      f'{p99:.1f}' if isinstance(p99, (int, float)) else '-',
                      time.strftime('%Y-%m-%d %H:%M', time.gmtime(row['registered_at']))))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        cells = zip(line, widths, strict=True)
        print('  '.join(cell.ljust(width) for cell, width in cells).rstrip())
    return 0


def _cmd_model_show(args: argparse.Namespace) -> int:
    from cobot_hybrid_protocol.model_card import card_text

    print(card_text(_registry(args).card(args.name, args.version)), end='')
    return 0


def _print_aliases(args: argparse.Namespace, aliases: dict[str, int]) -> int:
    if args.json:
        print(json.dumps({'name': args.name, 'aliases': aliases}))
    else:
        print(f'{args.name}: {_aliases_line(aliases)}')
    return 0


def _cmd_model_promote(args: argparse.Namespace) -> int:
    return _print_aliases(args, _registry(args).promote(args.name, args.version))


def _cmd_model_rollback(args: argparse.Namespace) -> int:
    return _print_aliases(args, _registry(args).rollback(args.name))


def _cmd_model_canary(args: argparse.Namespace) -> int:
    from cobot_hybrid_planner.model_registry import RegistryError

    registry = _registry(args)
    if args.clear == (args.version is not None):
        raise RegistryError('give --version V (the canary) or --clear')
    if args.clear:
        registry.clear_canary(args.name)
    else:
        registry.set_canary(args.name, args.version)
    return _print_aliases(args, registry.aliases(args.name))


def _cmd_model_fetch(args: argparse.Namespace) -> int:
    path = _registry(args).fetch(args.name, args.version, Path(args.dest))
    print(json.dumps({'path': str(path)}) if args.json else path)
    return 0


def _register_model(subparsers: Any) -> None:
    """Add ``model register|list|show|promote|rollback|canary|fetch``."""
    model = subparsers.add_parser('model', help='the model registry (MLflow; cloud side)')
    commands = model.add_subparsers(dest='model_command', required=True)

    def command(name: str, help_text: str, func: Any, version: bool = False) -> Any:
        parser = commands.add_parser(name, help=help_text)
        parser.add_argument('--name', required=True, help='registered model, e.g. yolo11n-pose')
        if version:
            parser.add_argument('--version', type=int, required=True)
        parser.add_argument('--registry', default='', metavar='URI',
                            help='sqlite:////abs/registry.db or http://HOST:PORT (default: '
                            'registry.db in the planner data folder)')
        parser.add_argument('--json', action='store_true')
        parser.set_defaults(func=func)
        return parser

    register = command('register', 'store a model file and its card as a new version',
                       _cmd_model_register)
    register.add_argument('file', metavar='FILE.onnx')
    register.add_argument('--card', default='', metavar='card.json',
                          help='its card, from `cobot-hybrid model-card` (required)')
    command('list', 'versions with aliases and metrics', _cmd_model_list)
    command('show', "a version's card", _cmd_model_show, version=True)
    command('promote', 'champion -> this version; previous -> the old champion',
            _cmd_model_promote, version=True)
    command('rollback', 'champion -> previous; previous cleared', _cmd_model_rollback)
    canary = command('canary', 'point canary at a candidate (or --clear it)', _cmd_model_canary)
    canary.add_argument('--version', type=int, default=None)
    canary.add_argument('--clear', action='store_true')
    fetch = command('fetch', "download a version's file, verified against its card",
                    _cmd_model_fetch, version=True)
    fetch.add_argument('--dest', default='.', metavar='DIR')


def register(subparsers: Any) -> None:
    """Add ``plan`` and ``serve``."""
    plan_cmd = subparsers.add_parser('plan', help='plan a work order offline')
    plan_cmd.add_argument('orders', help='work order YAML/JSON (schema cobot_hybrid/orders/v1)')
    plan_cmd.add_argument('--site', required=True, help='site YAML (stations, robots)')
    _flag(plan_cmd, '--time-limit', 'plan_time_limit_s')
    plan_cmd.add_argument('--json', action='store_true')
    plan_cmd.set_defaults(func=_cmd_plan)
    serve = subparsers.add_parser('serve', help='run the cloud planner (no ROS needed)')
    serve.add_argument('--site', required=True, help='site YAML (stations, robots)')
    serve.add_argument('--key', required=True, help="planner's Ed25519 private key (PEM)")
    _flag(serve, '--key-id', 'key_id')
    _flag(serve, '--host', 'broker_host')
    _flag(serve, '--port', 'broker_port')
    _flag(serve, '--replica-id', 'client_id')
    _flag(serve, '--fleet', 'fleet_id')
    _flag(serve, '--lease-s', 'lease_s')
    _flag(serve, '--data-dir', 'data_dir')
    _flag(serve, '--orders', 'orders_file')
    _flag(serve, '--time-limit', 'plan_time_limit_s')
    _flag(serve, '--model-registry', 'model_registry')
    for name in _AUTH:
        _flag(serve, '--' + name.replace('_', '-'), name)
    serve.set_defaults(func=_cmd_serve)
    submit = subparsers.add_parser('submit', help='hand a work order to the planner over MQTT')
    submit.add_argument('orders', help='work order YAML/JSON (schema cobot_hybrid/orders/v1)')
    submit.add_argument('--site', default='', help='also check it against this site YAML')
    _flag(submit, '--host', 'broker_host')
    _flag(submit, '--port', 'broker_port')
    for name in _AUTH:
        _flag(submit, '--' + name.replace('_', '-'), name)
    submit.set_defaults(func=_cmd_submit)
    health = subparsers.add_parser('planner-health', help="check the planner's state folder "
                                   '(container health check)')
    _flag(health, '--data-dir', 'data_dir')
    health.set_defaults(func=_cmd_health)
    _register_model(subparsers)
    from cobot_hybrid_planner import rollout_cli
    rollout_cli.register(subparsers)
    from cobot_hybrid_planner.offload import history_cli, worker_cli
    worker_cli.register(subparsers)
    history_cli.register(subparsers)
