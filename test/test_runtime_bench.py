"""``cobot-hybrid bench``: every (backend, precision) row on real photos, INT8 on held-out ones.

The measured runs use ONNX Runtime on the CPU with the 320 model and a few frames; a backend
that cannot run here (TensorRT without a GPU) must be a skipped row with its reason. No test
asserts a time: only that the measured fields exist and are finite and positive.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import pytest

from cobot_hybrid_perception.bench_report import format_table, seed_table
from cobot_hybrid_perception.errors import ConfigError
from cobot_hybrid_perception.media import MediaSourceError, load_image, sample_photo_path
from cobot_hybrid_perception.runtime_bench import (
    BenchSettings,
    agreement,
    bench_frames,
    describe_frames,
    plan_rows,
)

CALIBRATION = ('astronaut', 'bus', 'camera')
OTHERS = ('coffee', 'zidane')
PNG = b'\x89PNG\r\n\x1a\n'


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', *args],
                          capture_output=True, text=True, timeout=300, check=False)


def _photos(folder: Path, names: tuple[str, ...]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        cv2.imwrite(str(folder / f'{name}.png'), load_image(sample_photo_path(name), 'bgr8'))


@pytest.fixture(scope='module')
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the 320 model, its INT8 model calibrated on 3 photos, and 5 photos to bench."""
    from cobot_hybrid_perception.models import resolve_model

    root = tmp_path_factory.mktemp('bench')
    shutil.copyfile(resolve_model('default', 320), root / 'pose-320.onnx')
    _photos(root / 'calib', CALIBRATION)
    _photos(root / 'frames', CALIBRATION + OTHERS)
    result = _cli('quantize', str(root / 'pose-320.onnx'), '--calib', str(root / 'calib'),
                  '--holdout', 'none')
    assert result.returncode == 0, result.stderr
    assert (root / 'pose-320-int8.onnx').is_file()
    return root


@pytest.fixture(scope='module')
def report(workdir: Path) -> dict[str, Any]:
    """One real bench run: ort-cpu (fp32 and the INT8 model) and TensorRT, over 5 photos.

    No --imgsz: 0, the model's own size (320 here), as for detect.
    """
    result = _cli('bench', '--model', str(workdir / 'pose-320.onnx'),
                  '--images', str(workdir / 'frames'), '--runs', '3', '--backends', 'ort-cpu',
                  'tensorrt', '--json', '--report', str(workdir / 'report'))
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def _rows(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row['backend'], row['precision']): row for row in report['rows']}


def _finite_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_rows_are_backend_precision_pairs_with_measured_fields(report: dict[str, Any]) -> None:
    rows = _rows(report)
    assert list(rows) == [('tensorrt', 'fp32'), ('tensorrt', 'fp16'), ('tensorrt', 'int8'),
                          ('ort-cpu', 'fp32'), ('ort-cpu', 'int8')]
    for key in (('ort-cpu', 'fp32'), ('ort-cpu', 'int8')):
        row = rows[key]
        assert 'skipped' not in row, row
        for field in ('p50_ms', 'p99_ms', 'mean_ms', 'throughput_fps', 'peak_rss_mb', 'load_s'):
            assert _finite_positive(row[field]), (key, field, row[field])
        assert row['p99_ms'] >= row['p50_ms']
        assert row['runs'] >= 5  # every frame once at least, and --runs 3
        assert 'boxes' not in row
    assert rows[('ort-cpu', 'int8')]['model'] == 'pose-320-int8.onnx'
    assert report['settings']['imgsz'] == 320   # the model's own, not 0
    assert all(rows[key]['imgsz'] == 320 for key in (('ort-cpu', 'fp32'), ('ort-cpu', 'int8')))
    reference = rows[('ort-cpu', 'fp32')]
    assert reference['recall_vs_fp32'] == 1.0
    assert reference['mean_iou_vs_fp32'] == pytest.approx(1.0)
    assert reference['agreement_frames'] == 5
    assert report['frames']['count'] == 5


def test_a_backend_that_cannot_run_here_is_a_skipped_row_with_the_reason(
        report: dict[str, Any]) -> None:
    from cobot_hybrid_perception.backends.tensorrt_backend import tensorrt_status

    if tensorrt_status() is None:
        pytest.skip('TensorRT runs on this machine, so its rows are measured')
    rows = _rows(report)
    assert 'TensorRT' in rows[('tensorrt', 'fp32')]['skipped']
    for precision in ('fp16', 'int8'):  # the runtime is missing, whatever the precision
        assert rows[('tensorrt', precision)]['skipped'] == rows[('tensorrt', 'fp32')]['skipped']
    assert re.search(r'^tensorrt\s+fp32\s+skipped: .*TensorRT', format_table(report), re.M)


def test_int8_agreement_leaves_out_the_frames_it_was_calibrated_on(report: dict[str, Any]
                                                                    ) -> None:
    int8 = _rows(report)[('ort-cpu', 'int8')]
    assert int8['excluded_calibration_frames'] == 3
    assert int8['agreement_frames'] == 2
    assert 'calibrated on 3 images' in int8['agreement_note']
    assert 0.0 <= int8['recall_vs_fp32'] <= 1.0 and 0.0 <= int8['mean_iou_vs_fp32'] <= 1.0
    line = next(line for line in format_table(report).splitlines()
                if line.startswith('ort-cpu') and ' int8' in line)
    assert re.search(r'\s2\s+3 calibration frames left out$', line), line
    assert '3 calibration frames left out' in seed_table(report)


def test_the_machine_is_in_the_header(report: dict[str, Any]) -> None:
    machine = report['machine']
    assert machine['cpu'] and machine['cores'] >= 1 and machine['usable_cores'] >= 1
    assert 'onnxruntime' in machine['versions']
    first = format_table(report).splitlines()[0]
    assert first.startswith('# machine: ') and machine['cpu'] in first


def test_html_report_holds_the_table_and_the_plot_inline(workdir: Path,
                                                         report: dict[str, Any]) -> None:
    page = (workdir / 'report' / 'bench.html').read_text(encoding='utf-8')
    assert '<table>' in page and '<td>ort-cpu</td>' in page and 'skipped: ' in page
    assert report['machine']['cpu'] in page
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match is not None
    assert base64.b64decode(match.group(1)).startswith(PNG)
    assert not re.search(r'(src|href)="(https?:)?//', page) and '<script' not in page
    assert (workdir / 'report' / 'bench.png').read_bytes().startswith(PNG)


def test_seed_table_is_markdown_with_every_row(report: dict[str, Any]) -> None:
    lines = seed_table(report).splitlines()
    assert lines[0].startswith('| Runtime | Hardware target | Precision | Latency p50 / p99')
    rows = [line for line in lines[2:] if line.startswith('| ')]
    skipped = [row for row in report['rows'] if row['backend'] == 'tensorrt']
    trt = [line for line in rows if line.startswith('| tensorrt |')]
    if len({row.get('skipped') for row in skipped}) == 1:  # one reason: one line
        assert len(trt) == 1 and '| fp32, fp16, int8 | not measured:' in trt[0]
    assert len([line for line in rows if line.startswith('| ort-cpu |')]) == 2
    measured = next(line for line in rows if line.startswith('| ort-cpu | any CPU'))
    p50, p99 = (float(v) for v in measured.split('|')[4].split('/'))
    assert _finite_positive(p50) and p99 >= p50


def test_images_that_yield_nothing_are_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / 'empty').mkdir()
    result = _cli('bench', '--imgsz', '320', '--images', str(tmp_path / 'empty'),
                  '--backends', 'ort-cpu')
    assert result.returncode == 2 and str(tmp_path / 'empty') in result.stderr
    pattern = str(tmp_path / 'nothing' / '*.jpg')
    with pytest.raises(MediaSourceError, match=re.escape(pattern)):
        describe_frames(pattern, 10)


def test_frames_are_limited_and_globs_expand(workdir: Path) -> None:
    assert [f.label for f in bench_frames(str(workdir / 'frames'), 2)] == \
        ['astronaut.png', 'bus.png']
    labels = [f.label for f in bench_frames(str(workdir / 'frames' / 'c*.png'), 10)]
    assert labels == ['camera.png', 'coffee.png']
    with pytest.raises(ConfigError):
        bench_frames('samples', 0)


def test_plan_has_every_backend_and_precision_and_says_why_not(tmp_path: Path) -> None:
    source = tmp_path / 'm-320.onnx'
    source.write_bytes(b'fp32')
    backends = ('auto', 'tensorrt', 'ort-cuda', 'ort-cpu', 'litert', 'ultralytics')
    rows = {(r.backend, r.precision): r for r in plan_rows(source, backends=backends)}
    assert list(rows) == [
        ('tensorrt', 'fp32'), ('tensorrt', 'fp16'), ('tensorrt', 'int8'), ('ort-cuda', 'fp32'),
        ('ort-cuda', 'fp16'), ('ort-cuda', 'int8'), ('ort-cpu', 'fp32'), ('ort-cpu', 'int8'),
        ('litert', 'fp32'), ('ultralytics', 'fp32'), ('openvino', 'fp32'), ('openvino', 'int8')]
    assert rows[('ort-cpu', 'fp32')].model == str(source)
    assert 'quantize' in rows[('ort-cpu', 'int8')].skipped
    assert 'make litert-model' in rows[('litert', 'fp32')].skipped
    assert 'not in this build' in rows[('openvino', 'fp32')].skipped
    assert '--calib' in rows[('tensorrt', 'int8')].skipped
    assert rows[('ort-cuda', 'fp16')].skipped and not rows[('ort-cuda', 'fp32')].skipped
    assert 'tensorrt row' in rows[('ort-cuda', 'int8')].skipped
    assert '.pt' in rows[('ultralytics', 'fp32')].skipped

    (tmp_path / 'm-320-int8.onnx').write_bytes(b'int8')
    (tmp_path / 'm-320.tflite').write_bytes(b'tflite')
    rows = {(r.backend, r.precision): r for r in plan_rows(
        source, ['ort-cpu', 'litert', 'tensorrt'], ['fp32', 'int8'], calib=str(tmp_path),
        backends=backends)}
    assert list(rows) == [('tensorrt', 'fp32'), ('tensorrt', 'int8'), ('ort-cpu', 'fp32'),
                          ('ort-cpu', 'int8'), ('litert', 'fp32')]
    assert rows[('ort-cpu', 'int8')].model == str(tmp_path / 'm-320-int8.onnx')
    assert rows[('litert', 'fp32')].model == str(tmp_path / 'm-320.tflite')
    assert rows[('tensorrt', 'int8')].calib_dir == str(tmp_path)
    with pytest.raises(ConfigError, match='unknown backends'):
        plan_rows(source, ['ort-cpu', 'onnx-magic'], backends=backends)


@pytest.mark.parametrize(('reference', 'candidate', 'expected'), [
    ([[[0, 0, 10, 10]]], [[[0, 0, 10, 10]]], (1.0, 1.0)),
    ([[[0, 0, 10, 10]]], [[[0, 0, 10, 6]]], (1.0, 0.6)),
    ([[[0, 0, 10, 10]]], [[[20, 20, 30, 30]]], (0.0, 0.0)),
    ([[]], [[]], (1.0, 1.0)),
    ([[[0, 0, 10, 10], [20, 20, 30, 30]]], [[[0, 0, 10, 10]]], (0.5, 1.0)),
])
def test_agreement_by_hand(reference: list[Any], candidate: list[Any],
                           expected: tuple[float, float]) -> None:
    recall, mean_iou = agreement(reference, candidate)
    assert recall == pytest.approx(expected[0]) and mean_iou == pytest.approx(expected[1])


def test_a_busy_machine_is_said_to_make_the_numbers_noisy(report: dict[str, Any]) -> None:
    assert set(report['load_1min']) == {'before', 'after'}
    busy = {**report, 'load_1min': {'before': 40.0, 'after': 41.0}}
    assert 'latencies are noisy' in format_table(busy)
    quiet = {**report, 'load_1min': {'before': 0.0, 'after': 1.0}}
    assert 'noisy' not in format_table(quiet)


@pytest.mark.parametrize('imgsz', [-32, 100, 1])
def test_bench_imgsz_is_0_or_a_multiple_of_32(imgsz: int) -> None:
    assert BenchSettings().imgsz == 0 and BenchSettings(imgsz=320).imgsz == 320
    with pytest.raises(ConfigError, match="or 0 \\(the model's own size\\)"):
        BenchSettings(imgsz=imgsz)
