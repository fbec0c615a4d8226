"""The results of ``cobot-hybrid bench`` as a table, a markdown table, a plot and an HTML page.

Pure rendering of the dictionary :func:`cobot_hybrid_perception.runtime_bench.run_bench`
returns: no measurement, no ROS. The plot is drawn with matplotlib's Agg canvas (no display,
no global backend switch); the HTML page is self-contained (inline style, the plot embedded as
a base64 PNG, nothing fetched from the network).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

__all__ = ['format_table', 'machine_line', 'render_html', 'render_png', 'seed_table',
           'write_report']


def _label(row: dict[str, Any]) -> str:
    return f'{row["backend"]} {row["precision"]}'


def _precision(row: dict[str, Any]) -> str:
    """Give the row's precision, starred when the backend labels what it ran otherwise."""
    shown, asked = row.get('backend_precision'), str(row['precision'])
    return asked + ('*' if shown and shown != asked else '')


def _agreement(row: dict[str, Any]) -> str:
    if row.get('recall_vs_fp32') is None:
        return 'n/a'
    text = (f'{row["recall_vs_fp32"]:.3f} / {row["mean_iou_vs_fp32"]:.3f} on '
            f'{row["agreement_frames"]} frames')
    if row.get('excluded_calibration_frames'):
        text += f' ({row["excluded_calibration_frames"]} calibration frames left out)'
    return text


def machine_line(report: dict[str, Any]) -> str:
    """One line: CPU, cores, memory, GPUs and runtime versions."""
    machine = report['machine']
    gpus = '; '.join(machine['gpus']) or 'no GPU'
    versions = ', '.join(f'{k} {v}' for k, v in machine['versions'].items())
    return (f'{machine["cpu"]}, {machine["cores"]} cores ({machine["usable_cores"]} usable), '
            f'{machine["memory_gb"]:.0f} GB, {gpus}; {machine["os"]} {machine["arch"]}, '
            f'Python {machine["python"]}; {versions}')


def _settings_line(report: dict[str, Any]) -> str:
    settings, frames = report['settings'], report['frames']
    threads = settings['threads'] or 'runtime default'
    return (f'model {report["model"]}, imgsz {settings["imgsz"]}, images {frames["spec"]!r} '
            f'({frames["count"]} frames), at least {settings["runs"]} timed runs per row, '
            f'threads {threads}; agreement: recall at IoU 0.5 / mean IoU against '
            f'{report["reference"]}')


def _notes(report: dict[str, Any]) -> list[str]:
    notes = []
    load = report.get('load_1min') or {}
    cores = report['machine']['usable_cores'] or 1
    before = load.get('before')
    if before is not None and before > 0.5 * cores:  # 'after' counts this run's own work
        notes.append(f'1-minute load average {before} before this run (on {cores} cores; '
                     f'{load.get("after")} after): other processes shared the CPU, so '
                     'latencies are noisy; rerun on a quiet machine to compare')
    for row in report['rows']:
        if 'skipped' in row:
            continue
        if row.get('backend_precision') and row['backend_precision'] != row['precision']:
            notes.append(f'{_label(row)}*: the backend labels what it ran '
                         f'{row["backend_precision"]}')
        if row.get('agreement_note'):
            notes.append(f'{_label(row)}: {row["agreement_note"]}')
    return notes


def format_table(report: dict[str, Any]) -> str:
    """Format the fixed-width table of ``cobot-hybrid bench``, the machine above it."""
    lines = [f'# machine: {machine_line(report)}', f'# {_settings_line(report)}',
             f'{"backend":<13} {"prec":<5} {"p50 ms":>8} {"p99 ms":>8} {"fps":>7} '
             f'{"peak MB":>8} {"recall":>7} {"mIoU":>6} {"frames":>6}  held out']
    for row in report['rows']:
        if 'skipped' in row:
            lines.append(f'{row["backend"]:<13} {row["precision"]:<5} skipped: '
                         f'{row["skipped"]}')
            continue
        recall, miou = row.get('recall_vs_fp32'), row.get('mean_iou_vs_fp32')
        excluded = row.get('excluded_calibration_frames', 0)
        lines.append(
            f'{row["backend"]:<13} {_precision(row):<5} {row["p50_ms"]:>8.2f} '
            f'{row["p99_ms"]:>8.2f} {row["throughput_fps"]:>7.1f} {row["peak_rss_mb"]:>8.0f} '
            f'{"n/a" if recall is None else f"{recall:.3f}":>7} '
            f'{"n/a" if miou is None else f"{miou:.3f}":>6} '
            f'{row.get("agreement_frames", 0):>6}  '
            f'{f"{excluded} calibration frames left out" if excluded else "-"}')
    lines.extend(f'# {note}' for note in _notes(report))
    return '\n'.join(lines)


def _collapsed(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """Merge consecutive rows of one backend skipped for the same reason (one line each)."""
    merged: list[tuple[dict[str, Any], str]] = []
    for row in rows:
        if merged and 'skipped' in row and merged[-1][0].get('skipped') == row['skipped'] \
                and merged[-1][0]['backend'] == row['backend']:
            merged[-1] = (merged[-1][0], f'{merged[-1][1]}, {row["precision"]}')
            continue
        merged.append((row, _precision(row)))
    return merged


def seed_table(report: dict[str, Any]) -> str:
    """Format the seed's runtime comparison as markdown, filled with this run's numbers."""
    lines = ['| Runtime | Hardware target | Precision | Latency p50 / p99 (ms) | '
             'Throughput (fps) | Peak memory (MB) | Agreement with FP32 (recall / mIoU) |',
             '|---|---|---|---|---|---|---|']
    for row, precisions in _collapsed(report['rows']):
        cells = [row['backend'], row.get('target', ''), precisions]
        if 'skipped' in row:
            reason = row['skipped'].replace('|', '\\|').replace('\n', ' ')
            cells += [f'not measured: {reason}', '-', '-', '-']
        else:
            cells += [f'{row["p50_ms"]:.1f} / {row["p99_ms"]:.1f}',
                      f'{row["throughput_fps"]:.1f}', f'{row["peak_rss_mb"]:.0f}',
                      _agreement(row)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines.append('')
    lines.append(f'Measured on {machine_line(report)}.')
    lines.append(f'Settings: {_settings_line(report)}.')
    lines.extend(f'- {note}' for note in _notes(report))
    return '\n'.join(lines)


def render_png(report: dict[str, Any]) -> bytes:
    """Bars of p50 and p99 latency per measured row, and its peak memory below, as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [row for row in report['rows'] if 'skipped' not in row]
    labels = [_label(row).replace(' ', '\n') for row in rows]
    figure = Figure(figsize=(max(6.0, 1.2 * len(rows) + 2.0), 6.5), dpi=100)
    FigureCanvasAgg(figure)
    latency, memory = figure.subplots(2, 1, sharex=True,
                                      gridspec_kw={'height_ratios': [2, 1]})
    positions = list(range(len(rows)))
    if rows:
        width = 0.38
        p50s, p99s = [r['p50_ms'] for r in rows], [r['p99_ms'] for r in rows]
        # One stall must not flatten every other bar: clip at 4x the slowest p50, say so.
        top = min(max(p99s), 4.0 * max(p50s)) * 1.15
        latency.set_ylim(0, top)
        for offset, values, name, colour in ((-width / 2, p50s, 'p50', '#4878a8'),
                                             (width / 2, p99s, 'p99', '#e0884a')):
            xs = [p + offset for p in positions]
            latency.bar(xs, values, width, label=name, color=colour)
            for x, value in zip(xs, values, strict=True):
                clipped = value > top
                latency.text(x, min(value, top * 0.93), f'{value:.1f}' + (' ^' if clipped
                                                                          else ''),
                             ha='center', va='bottom', fontsize=7)
        latency.legend(loc='upper left')
        memory.bar(positions, [r['peak_rss_mb'] for r in rows], 0.5, color='#6a9f58')
        for x, row in zip(positions, rows, strict=True):
            memory.text(x, row['peak_rss_mb'], f'{row["peak_rss_mb"]:.0f}', ha='center',
                        va='bottom', fontsize=7)
        memory.set_xticks(positions, labels, fontsize=8)
        memory.set_xlim(-0.6, max(len(rows), 3) - 0.4)
        memory.set_ylim(0, 1.2 * max(r['peak_rss_mb'] for r in rows))
    else:
        latency.text(0.5, 0.5, 'no runtime could run here', ha='center', va='center',
                     transform=latency.transAxes)
    latency.set_ylabel('latency per frame (ms; ^ = clipped)')
    memory.set_ylabel('peak RSS (MB)')
    latency.set_title(f'{report["model"]} at {report["settings"]["imgsz"]}, '
                      f'{report["frames"]["count"]} frames', fontsize=10)
    latency.grid(axis='y', alpha=0.3)
    memory.grid(axis='y', alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png')
    return buffer.getvalue()


_STYLE = ('body{font-family:sans-serif;margin:2em;color:#222}'
          'table{border-collapse:collapse;font-size:14px}'
          'th,td{border:1px solid #bbb;padding:4px 8px;text-align:left}'
          'th{background:#eee}td.num{text-align:right}tr.skipped td{color:#777}'
          'p.meta{font-size:13px;color:#444}')


def render_html(report: dict[str, Any], png: bytes) -> str:
    """Render a self-contained page: machine, settings, table, the plot inline, notes."""
    esc = html.escape
    head = ('<tr><th>Runtime</th><th>Hardware target</th><th>Precision</th><th>p50 ms</th>'
            '<th>p99 ms</th><th>fps</th><th>Peak RSS MB</th><th>Recall</th><th>mIoU</th>'
            '<th>Frames scored</th><th>Note</th></tr>')
    body = []
    for row in report['rows']:
        first = (f'<td>{esc(row["backend"])}</td><td>{esc(row.get("target", ""))}</td>'
                 f'<td>{esc(_precision(row))}</td>')
        if 'skipped' in row:
            body.append(f'<tr class="skipped">{first}<td colspan="8">skipped: '
                        f'{esc(row["skipped"])}</td></tr>')
            continue
        recall, miou = row.get('recall_vs_fp32'), row.get('mean_iou_vs_fp32')
        note = row.get('agreement_note', '')
        if row.get('excluded_calibration_frames'):
            note = (f'{row["excluded_calibration_frames"]} calibration frames left out; '
                    + note)
        cells = [f'{row["p50_ms"]:.2f}', f'{row["p99_ms"]:.2f}', f'{row["throughput_fps"]:.1f}',
                 f'{row["peak_rss_mb"]:.0f}', 'n/a' if recall is None else f'{recall:.3f}',
                 'n/a' if miou is None else f'{miou:.3f}', str(row.get('agreement_frames', 0))]
        body.append(f'<tr>{first}' + ''.join(f'<td class="num">{c}</td>' for c in cells)
                    + f'<td>{esc(note)}</td></tr>')
    notes = ''.join(f'<li>{esc(n)}</li>' for n in _notes(report))
    image = base64.b64encode(png).decode('ascii')
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>cobot-hybrid bench: {esc(report["model"])}</title>'
            f'<style>{_STYLE}</style></head><body>'
            f'<h1>cobot-hybrid bench: {esc(report["model"])}</h1>'
            f'<p class="meta">Machine: {esc(machine_line(report))}</p>'
            f'<p class="meta">{esc(_settings_line(report))}</p>'
            f'<table>{head}{"".join(body)}</table>'
            + (f'<ul>{notes}</ul>' if notes else '')
            + f'<p><img alt="p50/p99 latency and peak memory per runtime" '
            f'src="data:image/png;base64,{image}"></p></body></html>\n')


def write_report(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write ``bench.png`` and ``bench.html`` into ``folder`` (created); return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    png = render_png(report)
    png_path, html_path = folder / 'bench.png', folder / 'bench.html'
    png_path.write_bytes(png)
    html_path.write_text(render_html(report, png), encoding='utf-8')
    return html_path, png_path
