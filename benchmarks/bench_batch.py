"""The batch report on a made-up fleet week: time per robot-day, and what Parquet buys over SQLite.

``cobot-hybrid history generate`` makes a 20-robot, 7-day history (two sites; stops, outages,
tasks, model metrics, snapshots; the summaries and the bridge's statistics every
``--period-s``) through the real store, sealed into one Parquet partition per day.

Compared, in the same run, on the same rows and the same per-robot-day code
(:func:`~cobot_hybrid_planner.offload.batch_report.robot_day`):

* **ours**: :class:`~cobot_hybrid_planner.offload.batch_report.BatchJob`: DuckDB reads each
  day's partition in place, one query per day, checkpoints each robot-day, writes the HTML
  report;
* **the peer**: the same rows kept in one SQLite table (what the recorder's buffer would be
  if nothing were ever sealed), one indexed query per robot-day.

Measured: seconds per robot-day (and in all), the bytes each keeps on disk, and a resumed
run (every checkpoint present). Asserts nothing.

Run: .venv/bin/python benchmarks/bench_batch.py [--period-s 10]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cobot_hybrid_planner.offload.batch_report import BatchJob, Prices, robot_day  # noqa: E402
from cobot_hybrid_planner.offload.history import HistoryStore  # noqa: E402
from cobot_hybrid_planner.offload.history_sim import FleetSim, generate  # noqa: E402


def folder_bytes(path: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in path.glob(pattern) if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--robots', type=int, default=20)
    parser.add_argument('--days', type=int, default=7)
    parser.add_argument('--period-s', type=float, default=10.0)
    args = parser.parse_args()
    sim = FleetSim(robots=args.robots, days=args.days, period_s=args.period_s)
    first = sim.start_day
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = HistoryStore(root / 'history')
        t0 = time.perf_counter()
        days = list(generate(sim, store))
        made = time.perf_counter() - t0
        rows = store.stats()['stored']
        store.close()
        last = days[-1]
        units = args.robots * args.days
        print(f'{args.robots} robots x {args.days} days, period {args.period_s:g} s: '
              f'{rows:,} rows ({rows / units:,.0f} per robot-day), made and sealed in '
              f'{made:.0f} s')
        job = BatchJob(root / 'history', root / 'out', first, last,
                       {r: sim.site_of(r) for r in sim.robot_ids()})
        t0 = time.perf_counter()
        job.run()
        ours = time.perf_counter() - t0
        again = BatchJob(root / 'history', root / 'out', first, last,
                         {r: sim.site_of(r) for r in sim.robot_ids()})
        t0 = time.perf_counter()
        again.run()
        resumed = time.perf_counter() - t0
        parquet = folder_bytes(root / 'history', 'day=*/history.parquet')
        # the peer: the same rows in one SQLite table, read per robot-day
        peer = sqlite3.connect(root / 'peer.db')
        peer.execute('CREATE TABLE rows (day TEXT, robot_id TEXT, kind TEXT, seq INTEGER, '
                     'stamp REAL, received_s REAL, bytes INTEGER, data TEXT)')
        import duckdb

        for day in days:
            part = root / 'history' / f'day={day}' / 'history.parquet'
            table = duckdb.sql(f"SELECT '{day}', robot_id, kind, seq, stamp, received_s, "
                               f"bytes, data FROM read_parquet('{part}')").fetchall()
            peer.executemany('INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)', table)
        peer.execute('CREATE INDEX rows_by_unit ON rows (day, robot_id, stamp)')
        peer.commit()
        t0 = time.perf_counter()
        prices = Prices()
        for day in days:
            end = time.mktime(time.strptime(day, '%Y-%m-%d')) + 86400.0
            for robot in sim.robot_ids():
                got = peer.execute('SELECT kind, stamp, received_s, bytes, data FROM rows '
                                   'WHERE day = ? AND robot_id = ? ORDER BY stamp, kind, seq',
                                   (day, robot)).fetchall()
                robot_day([(k, s, r, b, json.loads(d)) for k, s, r, b, d in got], end, prices)
        sqlite_s = time.perf_counter() - t0
        peer.close()
        sqlite_bytes = (root / 'peer.db').stat().st_size
        print(f'{"":<34} {"s in all":>9} {"ms per robot-day":>17} {"on disk MB":>11}')
        print(f'{"ours: Parquet days + DuckDB + report":<34} {ours:>9.2f} '
              f'{1e3 * ours / units:>17.1f} {parquet / 1e6:>11.1f}')
        print(f'{"ours, resumed (all checkpoints)":<34} {resumed:>9.2f} '
              f'{1e3 * resumed / units:>17.1f}')
        print(f'{"peer: one SQLite table":<34} {sqlite_s:>9.2f} '
              f'{1e3 * sqlite_s / units:>17.1f} {sqlite_bytes / 1e6:>11.1f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
