"""``cobot-hybrid history record|seal|stats|generate|report``: the fleet history's command line."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from cobot_hybrid_planner.offload.batch_report import BatchError, BatchJob, Prices
from cobot_hybrid_planner.offload.history import HistoryRecorder, HistoryStore
from cobot_hybrid_protocol.broker_auth import BrokerAuth
from cobot_hybrid_protocol.settings import specs

__all__ = ['register']

_AUTH = ('tls_ca', 'tls_cert', 'tls_key', 'username', 'password_file', 'password_env')


def _store(args: argparse.Namespace) -> HistoryStore:
    return HistoryStore(Path(args.data_dir).expanduser(), args.retention_days)


def _cmd_record(args: argparse.Namespace) -> int:
    from cobot_hybrid_planner.mqtt_session import PahoSession

    auth = BrokerAuth(**{name: getattr(args, name) for name in _AUTH})
    auth.check()
    store = _store(args)
    session = PahoSession(args.client_id, args.host, args.port, 3600, auth)
    recorder = HistoryRecorder(store, session, seal_period_s=args.seal_period_s)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    recorder.start()
    print(f'history recorder {args.client_id}: {store.root}', flush=True)
    try:
        while not stop.is_set():
            recorder.tick()
            stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        session.disconnect()
        store.close()
    return 0


def _cmd_seal(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        now = time.time() + (86400.0 if args.today_too else 0.0)
        print(json.dumps({'sealed': store.seal(now), 'expired': store.expire()}))
    finally:
        store.close()
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        print(json.dumps(dict(store.stats()), indent=2))
    finally:
        store.close()
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from cobot_hybrid_planner.offload.history_sim import FleetSim, generate

    sim = FleetSim(robots=args.robots, days=args.days, start_day=args.start_day,
                   period_s=args.period_s, seed=args.seed)
    store = _store(args)
    try:
        for day in generate(sim, store):
            print(f'{day}: {sim.robots} robots', flush=True)
    finally:
        store.close()
    if args.sites_out:
        sites: dict[str, list[str]] = {}
        for robot in sim.robot_ids():
            sites.setdefault(sim.site_of(robot), []).append(robot)
        Path(args.sites_out).write_text(yaml.safe_dump(sites))
    return 0


def _sites(path: str) -> dict[str, str]:
    if not path:
        return {}
    try:
        body = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BatchError(f'--sites {path}: {exc}') from None
    if not isinstance(body, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(r, str) for r in v)
            for k, v in body.items()):
        raise BatchError(f'--sites {path} must map each site to a list of robot ids')
    return {robot: site for site, robots in body.items() for robot in robots}


def _cmd_report(args: argparse.Namespace) -> int:
    values: dict[str, Any] = {}
    for name, (default, _) in specs(Prices).items():
        value = getattr(args, f'price_{name}')
        if value != default:
            values[name] = value
    job = BatchJob(Path(args.data_dir).expanduser(), Path(args.out), args.first, args.last,
                   _sites(args.sites), Prices(**values), near_miss_ratio=args.near_miss_ratio)
    started = time.perf_counter()
    data = job.run()
    print(f'{len(data["robot_days"])} robot-days ({job.resumed} from checkpoints, '
          f'{job.computed} computed) in {time.perf_counter() - started:.1f} s: '
          f'{Path(args.out) / "report.html"}', flush=True)
    return 0


def register(subparsers: Any) -> None:
    """Add ``history`` and its sub-commands."""
    history = subparsers.add_parser('history', help="the fleet's time series and its daily "
                                    'analytics')
    commands = history.add_subparsers(dest='history_command', required=True)

    def common(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument('--data-dir', default='~/.local/state/cobot_hybrid/history',
                         help='the history (hot.db and day=YYYY-MM-DD/ partitions)')
        cmd.add_argument('--retention-days', type=int, default=90,
                         help='partitions older than this are deleted [days]')

    record = commands.add_parser('record', help="store the fleet's uplink (no ROS needed)")
    common(record)
    record.add_argument('--host', default='127.0.0.1')
    record.add_argument('--port', type=int, default=1883)
    record.add_argument('--client-id', default='history-recorder')
    record.add_argument('--seal-period-s', type=float, default=600.0,
                        help='how often finished days are sealed [s]')
    for name in _AUTH:
        default, spec = specs(BrokerAuth)[name]
        record.add_argument('--' + name.replace('_', '-'), dest=name, default=default,
                            help=spec.text())
    record.set_defaults(func=_cmd_record)
    seal = commands.add_parser('seal', help='write finished days to their partitions now')
    common(seal)
    seal.add_argument('--today-too', action='store_true', help='seal today as well')
    seal.set_defaults(func=_cmd_seal)
    stats = commands.add_parser('stats', help='what the history holds')
    common(stats)
    stats.set_defaults(func=_cmd_stats)
    gen = commands.add_parser('generate', help="make up a fleet's history (tests, "
                              'benchmarks, trying the report)')
    common(gen)
    gen.add_argument('--robots', type=int, default=20)
    gen.add_argument('--days', type=int, default=7)
    gen.add_argument('--start-day', default='2026-11-23')
    gen.add_argument('--period-s', type=float, default=10.0,
                     help='period of the summaries and the bridge statistics [s]')
    gen.add_argument('--seed', type=int, default=1)
    gen.add_argument('--sites-out', default='', help='also write the site map (YAML) here')
    gen.set_defaults(func=_cmd_generate)
    report = commands.add_parser('report', help='the daily analytics and the HTML report '
                                 '(resumes from its checkpoints)')
    common(report)
    report.add_argument('--first', required=True, help='first UTC day (YYYY-MM-DD)')
    report.add_argument('--last', required=True, help='last UTC day (YYYY-MM-DD)')
    report.add_argument('--out', required=True, help='report and checkpoints folder')
    report.add_argument('--sites', default='', help='YAML: site -> [robot ids]')
    report.add_argument('--near-miss-ratio', type=float, default=0.5,
                        help='a stop for a person closer than this x S_p is a near miss')
    for name, (default, spec) in specs(Prices).items():
        report.add_argument(f'--price-{name.replace("_", "-")}', dest=f'price_{name}',
                            type=type(default), default=default, help=spec.text())
    report.set_defaults(func=_cmd_report)
