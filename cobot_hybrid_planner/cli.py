"""Planner sub-commands of ``cobot-hybrid``.

* ``plan ORDERS.yaml --site SITE.yaml [--json]``: plan offline, print missions and cost;
* ``serve --site SITE.yaml --key KEY.pem [--fleet F --replica-id ID]``: the cloud planner
  without ROS (a container next to the broker); with ``--fleet``, one of several replicas;
* ``submit ORDERS.yaml [--site SITE.yaml]``: hand a work order to the planner over the broker
  (the ``orders`` role); checked first, and the broker's answer said plainly;
* ``planner-health [--data-dir DIR]``: the container health check: the state folder takes
  writes and the fleet store and ledger pass SQLite's quick check.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.service import PlannerConfig
from cobot_hybrid_protocol.settings import specs

__all__ = ['ERRORS', 'register']

#: What the planner sub-commands raise for bad input (one line, exit status 2).
ERRORS = (PlannerError,)


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
                           password_file=args.password_file, password_env=args.password_env)
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
