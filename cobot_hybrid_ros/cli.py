"""The ROS-graph sub-commands of ``cobot-hybrid``: profile, record (see :func:`register`).

``cobot-hybrid record BAG --topics NAME[:pkg/msg/Type] ...`` writes the topics into a new
MCAP bag until Ctrl-C, SIGTERM or ``--duration`` (:mod:`cobot_hybrid_ros.bag_recorder`).

``cobot-hybrid profile`` joins the running graph (the environment's ROS_DOMAIN_ID and
discovery settings) for ``--seconds``, measures topics, nodes and processes
(:mod:`cobot_hybrid_ros.graph_profile`), probes the link when given ``--broker``, and prints the
decision matrix (:mod:`cobot_hybrid_ros.placement`). ``--out DIR`` writes ``profile.json`` (the
sample, with the matrix) and ``decision_matrix.md``; ``--from FILE`` places a recorded sample
again, e.g. with another link's numbers (``--rtt-ms``, ``--uplink-mbps``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from cobot_hybrid_ros.bag import BagError
from cobot_hybrid_ros.errors import ProfileError
from cobot_hybrid_ros.link_probe import LinkProbeError
from cobot_hybrid_ros.profile_input import read_sample

__all__ = ['ERRORS', 'register']

#: What the sub-command raises for bad input or an unreachable system (one line, exit 2).
ERRORS = (ProfileError, LinkProbeError, BagError)
#: Characters of a broker host name at most (DNS: 253).
MAX_HOST = 253


def _broker_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:1883`` for IPv6) -> (host, port); ProfileError otherwise."""
    host, _, port = text.rpartition(':')
    if host.startswith('[') and host.endswith(']'):
        host = host[1:-1]
        if not host or not all(c in '0123456789abcdefABCDEF:.' for c in host):
            host = ''
    elif ':' in host:
        raise ProfileError(f'--broker {text[:80]!r}: write an IPv6 address in brackets, '
                           'e.g. [::1]:1883')
    if not host or len(host) > MAX_HOST or not host.isprintable() or any(
            c.isspace() or c in '[]/' for c in host):
        raise ProfileError(f'--broker {text[:80]!r}: use HOST:PORT (a host of 1 to {MAX_HOST} '
                           'characters, e.g. localhost:1883)')
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise ProfileError(f'--broker {text[:80]!r}: use HOST:PORT with a port 1 to 65535')
    return host, int(port)


def _take_sample(seconds: float) -> dict[str, Any]:
    import rclpy

    from cobot_hybrid_ros.graph_profile import sample

    rclpy.init()
    try:
        node = rclpy.create_node('cobot_hybrid_profile')
        try:
            return sample(node, seconds)
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown()


def _cmd_profile(args: argparse.Namespace) -> int:
    from cobot_hybrid_ros.graph_profile import link_from, workloads
    from cobot_hybrid_ros.link_probe import probe
    from cobot_hybrid_ros.placement import decision_matrix, format_matrix

    if not (0.5 <= args.seconds <= 3600):
        raise ProfileError(f'--seconds {args.seconds}: use 0.5 to 3600')
    broker = _broker_address(args.broker) if args.broker else None
    data = read_sample(Path(args.from_file)) if args.from_file else _take_sample(args.seconds)
    measured = probe(*broker) if broker else None
    if args.rtt_ms is not None or args.uplink_mbps is not None:
        base = link_from(data, measured)
        measured = {'rtt_s': args.rtt_ms / 1e3 if args.rtt_ms is not None else base.rtt_s,
                    'uplink_bytes_per_s': args.uplink_mbps * 1e6 / 8
                    if args.uplink_mbps is not None else base.uplink_bytes_per_s,
                    'source': 'given on the command line'}
    link = link_from(data, measured, may_drop=not args.link_never_drops)
    rows = decision_matrix(workloads(data), link)
    table = format_matrix(rows, link)
    result = {'sample': data, 'link': {k: (None if isinstance(v, float) and not math.isfinite(v)
                                           else v) for k, v in vars(link).items()},
              'decision_matrix': [row.to_dict() for row in rows]}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / 'profile.json').write_text(json.dumps(result, indent=1, default=str))
        (out / 'decision_matrix.md').write_text(table + '\n')
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    print(f'# {len(data.get("nodes", {}))} nodes, {len(data.get("topics", {}))} topics over '
          f'{data.get("seconds", 0):.1f} s')
    print(f'{"topic":<34} {"Hz":>7} {"kB/s":>10}  publishers')
    for topic, info in sorted(data.get('topics', {}).items()):
        print(f'{topic:<34} {info.get("rate_hz", 0):>7.1f} '
              f'{info.get("bytes_per_s", 0) / 1e3:>10.1f}  {", ".join(info["publishers"])}')
    print(f'\n{"process":<26} {"CPU cores":>9} {"RSS MB":>8}')
    for name, proc in sorted(data.get('processes', {}).items()):
        cpu, rss = proc.get('cpu_cores'), proc.get('rss_mb')
        print(f'{name:<26} {cpu if cpu is not None else math.nan:>9.2f} '
              f'{rss if rss is not None else math.nan:>8.0f}')
    print('\n' + table)
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from cobot_hybrid_ros.bag_recorder import parse_topic, record

    record(Path(args.bag), [parse_topic(t) for t in args.topics], args.duration)
    return 0


def register(subparsers: Any) -> None:
    """Add the profile and record sub-commands."""
    rec = subparsers.add_parser(
        'record', help='record topics into a ROS 2 bag (MCAP) until Ctrl-C or --duration')
    rec.add_argument('bag', help='the new bag (a folder; must not exist)')
    rec.add_argument('--topics', nargs='+', required=True, metavar='NAME[:TYPE]',
                     help='topics to record; TYPE (pkg/msg/Name) must match the publishers, '
                          'without it the type comes from the graph')
    rec.add_argument('--duration', type=float, default=None,
                     help='stop after this many seconds (default: at Ctrl-C or SIGTERM)')
    rec.set_defaults(func=_cmd_record)
    profile = subparsers.add_parser(
        'profile', help='measure a running ROS graph and place its workloads (edge or cloud)')
    profile.add_argument('--seconds', type=float, default=5.0, help='how long to measure')
    profile.add_argument('--from', dest='from_file', default='',
                         help='place a recorded profile.json again instead of measuring')
    profile.add_argument('--broker', default='', help='HOST:PORT of the MQTT broker to probe '
                         '(RTT and uplink); default: the bridge link RTT from its diagnostics')
    profile.add_argument('--rtt-ms', type=float, default=None, help='use this link RTT')
    profile.add_argument('--uplink-mbps', type=float, default=None,
                         help='use this uplink bandwidth [Mbit/s]')
    profile.add_argument('--link-never-drops', action='store_true',
                         help='the link is assumed never to drop (default: it may)')
    profile.add_argument('--out', default='', help='write profile.json and decision_matrix.md')
    profile.add_argument('--json', action='store_true', help='print the whole result as JSON')
    profile.set_defaults(func=_cmd_profile)
