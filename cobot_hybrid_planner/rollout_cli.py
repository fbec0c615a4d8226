"""``cobot-hybrid rollout start|status|pause|resume|abort``: model rollouts from the command line.

The commands work on the planner's state folder (``--data-dir``, as ``serve`` takes it): the
running planner picks a new rollout up on its next step and advances it; these commands only
write the rollout store (SQLite, shared with the planner) and read it back. ``start`` takes
the candidate from the registry (its card and its file, checked against the card's sha256)
and the champion too (the version robots roll back to), and points the registry's ``canary``
alias at the candidate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from cobot_hybrid_planner.rollout import RolloutController, RolloutError, RolloutSpec
from cobot_hybrid_planner.rollout_gates import GateConfig
from cobot_hybrid_planner.site import load_site
from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.limits import parse_yaml
from cobot_hybrid_protocol.model_update import Acceptance
from cobot_hybrid_protocol.paths import planner_data_dir
from cobot_hybrid_protocol.topics import RobotIdError, check_robot_id

__all__ = ['ERRORS', 'register']

ERRORS: tuple[type[Exception], ...] = (RolloutError,)


def _refuse(*args: Any) -> Any:
    raise RolloutError('the command line does not send: the running planner does')


def _controller(data_dir: str) -> RolloutController:
    return RolloutController(planner_data_dir(data_dir) / 'rollouts', _refuse, _refuse)


def _fleet(args: argparse.Namespace) -> dict[str, str]:
    """Robot id -> site, from ``--fleet`` (YAML ``{robot_id: site}``) or ``--site``."""
    if args.fleet:
        try:
            data = parse_yaml(Path(args.fleet).read_bytes(), what=f'fleet file {args.fleet}')
        except (OSError, PayloadError) as exc:
            raise RolloutError(f'fleet file {args.fleet}: {exc}') from None
        if not isinstance(data, dict) or not data:
            raise RolloutError(f'fleet file {args.fleet} must map robot ids to site names')
        fleet = {}
        for robot, site in data.items():
            try:
                check_robot_id(robot)
            except RobotIdError as exc:
                raise RolloutError(f'fleet file {args.fleet}: {exc}') from None
            if not isinstance(site, str) or not site:
                raise RolloutError(f'fleet file {args.fleet}: the site of {robot} must be text')
            fleet[str(robot)] = site
        return fleet
    if args.site:
        site = load_site(Path(args.site))
        return {robot: args.site_name for robot in site.robots}
    raise RolloutError('name the robots: --fleet FLEET.yaml (robot: site) or --site SITE.yaml')


def _cmd_start(args: argparse.Namespace) -> int:
    from cobot_hybrid_planner.model_registry import ModelRegistry, default_registry_uri

    registry = ModelRegistry(args.registry or default_registry_uri(args.data_dir))
    card = registry.card(args.name, args.version)
    champion_version = registry.aliases(args.name).get('champion')
    champion = None if champion_version is None else \
        registry.card(args.name, champion_version).model
    try:
        steps = tuple(float(s) for s in args.steps.split(','))
    except ValueError:
        raise RolloutError(f'--steps {args.steps[:80]!r} must be fractions of the fleet, '
                           'e.g. 0.05,0.25,1.0') from None
    spec = RolloutSpec(
        args.id or f'{args.name}-v{args.version}-{int(time.time())}', card.model, champion,
        _fleet(args), steps, GateConfig(min_frames=args.min_frames,
                                        min_windows=args.min_windows,
                                        max_latency_ratio=args.max_latency_ratio),
        args.observe_s, args.step_timeout_s,
        acceptance=Acceptance(min_agreement=args.min_agreement,
                              max_latency_ms=args.max_latency_ms), http_url=args.http_url)
    controller = _controller(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        path = registry.fetch(args.name, args.version, Path(tmp))
        if champion is not None and champion_version is not None:
            controller.add_champion_file(registry.fetch(args.name, champion_version,
                                                        Path(tmp) / 'champion'), champion)
        controller.create(spec, path, time.time())
    registry.set_canary(args.name, args.version)
    print(f'rollout {spec.rollout_id}: {card.model.label} to {len(spec.robots)} robots in '
          f'steps {list(steps)}; champion '
          f'{champion.label if champion else "none (no rollback target)"}')
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    controller = _controller(args.data_dir)
    ids = [args.id] if args.id else [r for r, _ in controller.rollouts()]
    statuses = [controller.status(r) for r in ids]
    if args.json:
        print(json.dumps(statuses, indent=2))
        return 0
    if not statuses:
        print('no rollouts')
    for s in statuses:
        print(f'{s["rollout_id"]}: {s["state"]} at step {s["step"]}/{len(s["waves"])} '
              f'{s["steps"]}, {s["on_candidate"]}/{s["robots"]} robots run '
              f'{s["candidate"]["name"]} v{s["candidate"]["version"]}'
              + (f' - {s["reason"]}' if s['reason'] else ''))
        verdict = s['verdict']
        if verdict:
            print(f'  last gate (step {verdict["step"]}): {verdict["outcome"]}: '
                  f'{verdict["reason"]}')
    return 0


def _cmd_change(args: argparse.Namespace) -> int:
    controller = _controller(args.data_dir)
    getattr(controller, args.change)(args.id, time.time())
    print(f'rollout {args.id}: {controller.state(args.id)}')
    return 0


def register(subparsers: Any) -> None:
    """Add ``rollout`` and its sub-commands."""
    rollout = subparsers.add_parser('rollout', help='model rollouts to the fleet (canary, '
                                    'gates, rollback)')
    commands = rollout.add_subparsers(dest='rollout_command', required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument('--data-dir', default='', help="the planner's state folder")

    start = commands.add_parser('start', help='roll a registered version out')
    common(start)
    start.add_argument('--name', required=True)
    start.add_argument('--version', type=int, required=True)
    start.add_argument('--registry', default='', help='MLflow URI (default: the embedded '
                       'SQLite registry in the data dir)')
    start.add_argument('--fleet', default='', help='YAML {robot_id: site}')
    start.add_argument('--site', default='', help="or the planner's site file (one site)")
    start.add_argument('--site-name', default='site', help='the site of --site robots')
    start.add_argument('--id', default='', help='rollout id (default: <name>-v<version>-<t>)')
    start.add_argument('--steps', default='0.05,0.25,1.0', help='fractions of the fleet')
    start.add_argument('--observe-s', type=float, default=600.0,
                       help='metrics gathered per step before its gate [s]')
    start.add_argument('--step-timeout-s', type=float, default=3600.0,
                       help='a step not converged or without data this long pauses [s]')
    start.add_argument('--min-frames', type=int, default=1000)
    start.add_argument('--min-windows', type=int, default=3)
    start.add_argument('--max-latency-ratio', type=float, default=1.5)
    start.add_argument('--min-agreement', type=float, default=0.9,
                       help="the robot's own smoke check against its running model")
    start.add_argument('--max-latency-ms', type=float, default=250.0,
                       help="the robot's own smoke check: p99 at most [ms]")
    start.add_argument('--http-url', default='', help='robots fetch from this URL instead of '
                       "chunks over MQTT; {sha256} is replaced by the file's digest")
    start.set_defaults(func=_cmd_start)
    status = commands.add_parser('status', help='state, step, gate verdicts')
    common(status)
    status.add_argument('id', nargs='?', default='')
    status.add_argument('--json', action='store_true')
    status.set_defaults(func=_cmd_status)
    for change, text in (('pause', 'stop taking steps'), ('resume', 'continue a paused one'),
                         ('abort', 'roll every robot back to the champion')):
        parser = commands.add_parser(change, help=text)
        common(parser)
        parser.add_argument('id')
        parser.set_defaults(func=_cmd_change, change=change)
