"""The fleet's daily analytics: per robot and per site, per day, from the history's partitions.

What it measures, per robot-day (:func:`robot_day`):

* **time stopped by cause**: protective-stop time from the monitor's state changes
  (``events/safety_state``), under ``people`` (person, holding), ``stale_perception``
  (stale_perception, no_perception, detector_unhealthy, recovering) or ``fault`` (fault,
  clock, malformed_input, robot_pose); ``unknown`` for robots that send only
  ``events/protective_stop``;
* **near misses**: stops for a person who was already closer than ``near_miss_ratio`` (0.5)
  times the protective separation S_p the monitor required then (every stop for a person is
  inside S_p; these are the ones that came late, or where someone ran in), and the day's
  smallest separation and smallest separation / S_p;
* **link outages** (``status`` offline to online) and their time, the **queue peak** (the
  bridge's backlog), the **model versions** that ran, **tasks** done and failed;
* **bytes up** (every message as it crossed the link) against the **raw camera bytes** of the
  time online, and the **cost** that implies at the configured prices (:class:`Prices`).

It runs as a batch job, meant for preemptible machines: the work is cut into robot-days,
each written to ``checkpoints/<day>/<robot>.json`` (atomically, with the fingerprint of the
partition it came from and of the prices and ratio it was measured with) as soon as it is
done; a run started again on the same ``out`` folder keeps every checkpoint whose partition
and settings are unchanged and does only the rest, so a run
killed half-way and started again gives the same report as one that was never stopped.
The report (``report.html``, plots inline as SVG; ``report.json``) depends only on the
checkpoints, never on when it was made.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.offload.history import HistoryStore
from cobot_hybrid_protocol.settings import check_settings, setting

__all__ = ['BatchError', 'BatchJob', 'Prices', 'cause_group', 'robot_day']

CAUSE_GROUPS = {'person': 'people', 'holding': 'people', 'stale_perception': 'stale_perception',
                'no_perception': 'stale_perception', 'detector_unhealthy': 'stale_perception',
                'recovering': 'stale_perception', 'fault': 'fault', 'clock': 'fault',
                'malformed_input': 'fault', 'robot_pose': 'fault'}
GROUPS = ('people', 'stale_perception', 'fault', 'unknown')
_CHECKPOINT_VERSION = 1


class BatchError(PlannerError):
    """The batch job cannot run as asked (no partitions, a bad range, an unreadable day)."""


@dataclass(frozen=True)
class Prices:
    """What the cost view charges (set your provider's; the defaults are examples)."""

    per_gb_up: float = setting(0.09, 'data over the link, per GB (cellular or cloud '
                               'transfer)', unit='USD', low=0.0)
    per_million_messages: float = setting(1.0, 'broker messaging per million messages',
                                          unit='USD', low=0.0)
    per_vcpu_hour: float = setting(0.04, 'cloud compute per vCPU hour (a preemptible VM)',
                                   unit='USD', low=0.0)
    snapshot_cpu_s: float = setting(0.5, 'CPU seconds the snapshot job takes per snapshot '
                                    '(benchmarks/bench_worker.py measures it)', unit='s',
                                    low=0.0)
    camera_width: int = setting(640, 'camera width, for the raw bytes', unit='px', low=1)
    camera_height: int = setting(480, 'camera height', unit='px', low=1)
    camera_fps: float = setting(30.0, 'camera frame rate', unit='Hz', low=0.0)

    def __post_init__(self) -> None:
        check_settings(self, BatchError)


def cause_group(cause: str) -> str:
    """Return the group a monitor cause counts under (``unknown`` for one it does not know)."""
    return CAUSE_GROUPS.get(cause, 'unknown')


def _float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def robot_day(rows: Iterable[tuple[str, float, float, int, dict[str, Any]]],
              day_end: float, prices: Prices, near_miss_ratio: float = 0.5) -> dict[str, Any]:
    """Measure one robot's day from its rows ``(kind, stamp, received_s, bytes, data)``.

    The rows come oldest first; ``day_end`` closes what is still open (a stop, a link up).
    """
    stopped = dict.fromkeys(GROUPS, 0.0)
    stops = dict.fromkeys(GROUPS, 0)
    stop_since: tuple[float, str] | None = None
    legacy_since: float | None = None
    rows = list(rows)
    # a robot that sends the monitor's states is judged on them alone, whatever came first
    has_states = any(row[0] == 'events/safety_state' and isinstance(row[4].get('state'), str)
                     for row in rows)
    near, min_sep, min_ratio = 0, math.inf, math.inf
    outages, outage_s, offline_since = 0, 0.0, None
    online_since: float | None = None
    online_s = 0.0
    queue_peak = queue_peak_bytes = 0
    models: set[str] = set()
    done = failed = 0
    messages = up = snapshots = snapshot_bytes = 0
    by_kind: dict[str, int] = defaultdict(int)
    last_stamp = 0.0
    for kind, stamp, _received, size, data in rows:
        messages += 1
        up += size
        by_kind[kind.split('/')[0] if kind == 'status' else kind] += size
        last_stamp = max(last_stamp, stamp)
        if kind == 'events/safety_state':
            state, cause = str(data.get('state', '')), str(data.get('cause', ''))
            closest = _float(data.get('closest_distance_m'))
            required = _float(data.get('required_separation_m'))
            if math.isfinite(closest):
                min_sep = min(min_sep, closest)
            if state == 'PROTECTIVE_STOP':
                if stop_since is None:
                    group = cause_group(cause)
                    stop_since = (stamp, group)
                    stops[group] += 1
                    if cause == 'person' and math.isfinite(closest) \
                            and math.isfinite(required) and required > 0:
                        min_ratio = min(min_ratio, closest / required)
                        near += closest < near_miss_ratio * required
            elif stop_since is not None:
                stopped[stop_since[1]] += max(0.0, stamp - stop_since[0])
                stop_since = None
        elif kind == 'events/protective_stop' and not has_states:
            if data.get('data') is True and legacy_since is None:
                legacy_since = stamp
                stops['unknown'] += 1
            elif data.get('data') is False and legacy_since is not None:
                stopped['unknown'] += max(0.0, stamp - legacy_since)
                legacy_since = None
        elif kind == 'status':
            if data.get('state') == 'offline':
                if online_since is not None:
                    online_s += max(0.0, stamp - online_since)
                    online_since = None
                offline_since = stamp
            elif data.get('state') == 'online':
                if offline_since is not None and not data.get('retained'):
                    outages += 1
                    outage_s += max(0.0, stamp - offline_since)
                offline_since = None
                online_since = stamp if online_since is None else online_since
        elif kind == 'telemetry/bridge':
            backlog = data.get('backlog_messages')
            if isinstance(backlog, int):
                queue_peak = max(queue_peak, backlog)
            backlog_bytes = data.get('backlog_bytes')
            if isinstance(backlog_bytes, int):
                queue_peak_bytes = max(queue_peak_bytes, backlog_bytes)
        elif kind == 'events/model_metrics':
            model = data.get('model')
            if isinstance(model, dict):
                models.add(f'{str(model.get("name"))[:64]} v{str(model.get("version"))[:12]}')
        elif kind == 'events/task_progress':
            done += data.get('status') == 'done'
            failed += data.get('status') == 'failed'
        elif kind.startswith('events/') and isinstance(data.get('image'), dict):
            snapshots += 1
            snapshot_bytes += size
    end = min(day_end, last_stamp)   # what is still open counts until the last message
    if stop_since is not None:
        stopped[stop_since[1]] += max(0.0, end - stop_since[0])
    if legacy_since is not None:
        stopped['unknown'] += max(0.0, end - legacy_since)
    if online_since is not None:
        online_s += max(0.0, end - online_since)
    raw = online_s * prices.camera_fps * prices.camera_width * prices.camera_height * 3
    cost = {'link': up / 1e9 * prices.per_gb_up,
            'messages': messages / 1e6 * prices.per_million_messages,
            'compute': snapshots * prices.snapshot_cpu_s / 3600.0 * prices.per_vcpu_hour,
            'raw_stream': raw / 1e9 * prices.per_gb_up}
    return {'stopped_s': {k: round(v, 3) for k, v in stopped.items()}, 'stops': stops,
            'near_misses': near,
            'min_separation_m': None if math.isinf(min_sep) else round(min_sep, 3),
            'min_separation_ratio': None if math.isinf(min_ratio) else round(min_ratio, 3),
            'outages': outages, 'outage_s': round(outage_s, 3), 'online_s': round(online_s, 3),
            'queue_peak_messages': queue_peak, 'queue_peak_bytes': queue_peak_bytes,
            'models': sorted(models), 'tasks_done': done, 'tasks_failed': failed,
            'messages': messages, 'bytes_up': up, 'raw_camera_bytes': round(raw),
            'snapshots': snapshots, 'snapshot_bytes': snapshot_bytes,
            'bytes_by_kind': dict(sorted(by_kind.items())),
            'cost_usd': {k: round(v, 6) for k, v in cost.items()}}


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + '.part')
    with partial.open('w') as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


@dataclass
class BatchJob:
    """One run of the analytics over ``first`` .. ``last`` (UTC days) into ``out``."""

    history: Path
    out: Path
    first: str
    last: str
    sites: Mapping[str, str] = field(default_factory=dict)   # robot -> site ('' -> 'all')
    prices: Prices = field(default_factory=Prices)
    near_miss_ratio: float = 0.5
    on_unit: Callable[[str, str], None] | None = None        # after each robot-day
    resumed: int = 0
    computed: int = 0

    def _checkpoint(self, day: str, robot: str) -> Path:
        return self.out / 'checkpoints' / day / f'{robot}.json'

    def _load(self, path: Path, fingerprint: str) -> dict[str, Any] | None:
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(body, dict) or body.get('version') != _CHECKPOINT_VERSION \
                or body.get('partition') != fingerprint:
            return None
        metrics = body.get('metrics')
        if not isinstance(metrics, dict):
            return None
        text = json.dumps(metrics, sort_keys=True, separators=(',', ':'))
        if hashlib.sha256(text.encode()).hexdigest() != body.get('sha256'):
            return None   # a torn or edited checkpoint: done again
        return dict(metrics)

    def run(self) -> dict[str, Any]:
        """Do what the checkpoints lack, then write the report; return its data."""
        import duckdb

        store = HistoryStore.__new__(HistoryStore)   # only its paths: no buffer opened
        store.root = Path(self.history)
        partitions = store.glob(self.first, self.last)
        if not partitions:
            raise BatchError(f'no sealed history between {self.first} and {self.last} in '
                             f'{self.history} (cobot-hybrid history seal writes finished days)')
        units: dict[tuple[str, str], dict[str, Any]] = {}
        # a checkpoint is kept only for the same partition, prices, near-miss ratio and code
        settings = hashlib.sha256(json.dumps(
            [asdict(self.prices), self.near_miss_ratio, _CHECKPOINT_VERSION],
            sort_keys=True).encode()).hexdigest()[:16]
        for path in partitions:
            day = path.parent.name[4:]
            fingerprint = f'{_fingerprint(path)}:{settings}'
            con = duckdb.connect()
            try:
                robots = [r for (r,) in con.execute(
                    'SELECT DISTINCT robot_id FROM read_parquet(?) ORDER BY robot_id',
                    [str(path)]).fetchall()]
                todo = []
                for robot in robots:
                    kept = self._load(self._checkpoint(day, robot), fingerprint)
                    if kept is None:
                        todo.append(robot)
                    else:
                        units[(day, robot)] = kept
                        self.resumed += 1
                if todo:
                    rows = con.execute(
                        'SELECT robot_id, kind, stamp, received_s, bytes, data FROM '
                        'read_parquet(?) WHERE robot_id IN (SELECT unnest(?)) ORDER BY '
                        'robot_id, stamp, kind, seq', [str(path), todo]).fetchall()
            except duckdb.Error as exc:
                raise BatchError(f'the partition {path} cannot be read ({exc}): move it '
                                 'aside, or seal the day again from a backup') from None
            finally:
                con.close()
            if not todo:
                continue
            by_robot: dict[str, list[tuple[str, float, float, int, dict[str, Any]]]] = \
                defaultdict(list)
            for robot, kind, stamp, received, size, data in rows:
                try:
                    parsed = json.loads(data)
                except ValueError:
                    parsed = None
                by_robot[robot].append((kind, stamp, received, size,
                                        parsed if isinstance(parsed, dict) else {}))
            day_end = _day_start(day) + 86400.0
            for robot in todo:
                metrics = robot_day(by_robot[robot], day_end, self.prices,
                                    self.near_miss_ratio)
                text = json.dumps(metrics, sort_keys=True, separators=(',', ':'))
                _write_atomic(self._checkpoint(day, robot), json.dumps({
                    'version': _CHECKPOINT_VERSION, 'day': day, 'robot_id': robot,
                    'partition': fingerprint, 'metrics': metrics,
                    'sha256': hashlib.sha256(text.encode()).hexdigest()}, sort_keys=True))
                units[(day, robot)] = json.loads(text)
                self.computed += 1
                if self.on_unit is not None:
                    self.on_unit(day, robot)
        data = self._summary(units)
        _write_atomic(self.out / 'report.json', json.dumps(data, indent=1, sort_keys=True))
        _write_atomic(self.out / 'report.html', render_html(data))
        return data

    def _summary(self, units: Mapping[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
        sites: dict[tuple[str, str], dict[str, Any]] = {}
        for (day, robot), metrics in sorted(units.items()):
            key = (self.sites.get(robot, 'all'), day)
            total = sites.setdefault(key, {'robots': 0, **{k: 0 for k in (
                'near_misses', 'outages', 'tasks_done', 'tasks_failed', 'messages',
                'bytes_up', 'raw_camera_bytes', 'snapshots')}, 'stopped_s': dict.fromkeys(
                    GROUPS, 0.0), 'outage_s': 0.0, 'queue_peak_messages': 0, 'models': [],
                'cost_usd': {}})
            total['robots'] += 1
            for name in ('near_misses', 'outages', 'tasks_done', 'tasks_failed', 'messages',
                         'bytes_up', 'raw_camera_bytes', 'snapshots'):
                total[name] += metrics[name]
            total['outage_s'] = round(total['outage_s'] + metrics['outage_s'], 3)
            for group in GROUPS:
                total['stopped_s'][group] = round(total['stopped_s'][group]
                                                  + metrics['stopped_s'][group], 3)
            total['queue_peak_messages'] = max(total['queue_peak_messages'],
                                               metrics['queue_peak_messages'])
            total['models'] = sorted(set(total['models']) | set(metrics['models']))
            for name, value in metrics['cost_usd'].items():
                total['cost_usd'][name] = round(total['cost_usd'].get(name, 0.0) + value, 6)
        return {'first': self.first, 'last': self.last, 'prices': asdict(self.prices),
                'near_miss_ratio': self.near_miss_ratio,
                'robot_days': [{'day': d, 'robot_id': r, 'site': self.sites.get(r, 'all'),
                                **m} for (d, r), m in sorted(units.items())],
                'site_days': [{'site': s, 'day': d, **v} for (s, d), v in sorted(sites.items())]}


def _day_start(day: str) -> float:
    from datetime import datetime, timezone

    return datetime.strptime(day, '%Y-%m-%d').replace(tzinfo=timezone.utc).timestamp()


# --- the report ------------------------------------------------------------------------------

def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format='svg', metadata={'Date': None})
    text = buffer.getvalue()
    return text[text.index('<svg'):]


def _plots(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    plt.rcParams['svg.hashsalt'] = 'cobot_hybrid'
    plt.rcParams['svg.fonttype'] = 'none'
    rows = data['site_days']
    sites = sorted({r['site'] for r in rows})
    days = sorted({r['day'] for r in rows})
    out = []
    figure, axes = plt.subplots(1, len(sites), figsize=(5 * len(sites), 3.2), squeeze=False)
    for ax, site in zip(axes[0], sites, strict=True):
        bottom = [0.0] * len(days)
        for group in GROUPS:
            values = [next((r['stopped_s'][group] / 3600.0 for r in rows
                            if r['site'] == site and r['day'] == d), 0.0) for d in days]
            ax.bar([d[5:] for d in days], values, bottom=bottom, label=group)
            bottom = [a + b for a, b in zip(bottom, values, strict=True)]
        ax.set_title(f'{site}: time stopped [h] by cause')
        ax.tick_params(axis='x', labelrotation=45)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    out.append(('Time stopped by cause', _svg(figure)))
    plt.close(figure)
    figure, axes = plt.subplots(1, 3, figsize=(15, 3.2))
    for ax, key, title in ((axes[0], 'near_misses', 'near misses'),
                           (axes[1], 'tasks_done', 'tasks done'),
                           (axes[2], 'outages', 'link outages')):
        for site in sites:
            ax.plot([d[5:] for d in days], [next((r[key] for r in rows if r['site'] == site
                                                  and r['day'] == d), 0) for d in days],
                    marker='o', label=site)
        ax.set_title(f'{title} per day')
        ax.tick_params(axis='x', labelrotation=45)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    out.append(('Near misses, throughput, outages', _svg(figure)))
    plt.close(figure)
    figure, ax = plt.subplots(figsize=(6, 3.2))
    up = [sum(r['bytes_up'] for r in rows if r['day'] == d) / 1e6 for d in days]
    raw = [sum(r['raw_camera_bytes'] for r in rows if r['day'] == d) / 1e6 for d in days]
    ax.bar([d[5:] for d in days], raw, label='raw camera')
    ax.bar([d[5:] for d in days], up, label='sent up')
    ax.set_yscale('log')
    ax.set_title('fleet bytes per day [MB]')
    ax.legend(fontsize=7)
    ax.tick_params(axis='x', labelrotation=45)
    figure.tight_layout()
    out.append(('Bytes up against the raw camera', _svg(figure)))
    plt.close(figure)
    return out


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = ''.join(f'<th>{html.escape(h)}</th>' for h in headers)
    body = ''.join('<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in row) + '</tr>'
                   for row in rows)
    return f'<table><tr>{head}</tr>{body}</table>'


def render_html(data: Mapping[str, Any]) -> str:
    """Render the report as one HTML page (inline SVG, no scripts, nothing fetched)."""
    site_rows = [[r['site'], r['day'], r['robots'],
                  *(f'{r["stopped_s"][g] / 60:.1f}' for g in GROUPS), r['near_misses'],
                  r['outages'], f'{r["outage_s"] / 60:.1f}', r['queue_peak_messages'],
                  ', '.join(r['models']), r['tasks_done'], r['tasks_failed']]
                 for r in data['site_days']]
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in data['robot_days']:
        t = totals[r['robot_id']]
        t['bytes_up'] += r['bytes_up']
        t['raw'] += r['raw_camera_bytes']
        t['days'] += 1
        for name, value in r['cost_usd'].items():
            t[name] += value
    cost_rows = [[robot, f'{t["bytes_up"] / t["days"] / 1e6:.2f}',
                  f'{t["raw"] / t["days"] / 1e9:.1f}',
                  f'{t["raw"] / t["bytes_up"]:.0f}x' if t['bytes_up'] else '-',
                  f'{t["link"] / t["days"]:.4f}', f'{t["messages"] / t["days"]:.4f}',
                  f'{t["compute"] / t["days"]:.4f}', f'{t["raw_stream"] / t["days"]:.2f}']
                 for robot, t in sorted(totals.items())]
    prices = data['prices']
    parts = [
        '<!DOCTYPE html><html><head><meta charset="utf-8">',
        f'<title>cobot_hybrid fleet report {data["first"]} .. {data["last"]}</title>',
        '<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;'
        'font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}'
        '</style></head><body>',
        f'<h1>Fleet report {html.escape(data["first"])} .. {html.escape(data["last"])}</h1>',
        f'<p>{len(data["robot_days"])} robot-days. Stop time counted by the monitor\'s cause '
        '(people, stale perception, faults); a near miss is a stop for a person already '
        f'closer than {data["near_miss_ratio"]:g} x the protective separation S_p required '
        'then.</p>']
    for title, svg in _plots(data):
        parts += [f'<h2>{html.escape(title)}</h2>', svg]
    parts += ['<h2>Per site and day</h2>', _table(
        ['site', 'day', 'robots', *(f'stopped {g} [min]' for g in GROUPS), 'near misses',
         'outages', 'outage [min]', 'queue peak', 'models', 'tasks done', 'tasks failed'],
        site_rows)]
    parts += ['<h2>Cost per robot and day</h2>',
              f'<p>Prices: {html.escape(json.dumps(prices, sort_keys=True))}. Raw camera: '
              f'{prices["camera_width"]}x{prices["camera_height"]} RGB at '
              f'{prices["camera_fps"]:g} Hz while online.</p>', _table(
                  ['robot', 'MB up', 'raw camera GB', 'reduction', 'link USD',
                   'messages USD', 'compute USD', 'streaming raw USD'], cost_rows),
              '</body></html>']
    return '\n'.join(parts) + '\n'
