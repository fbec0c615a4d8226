"""A short run of `make demo`'s loop: every process really started, nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = [pytest.mark.ros, pytest.mark.broker, pytest.mark.slow]


def test_short_demo_loop_loses_nothing(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / 'demo.py'), '--seconds',
                             '20', '--outage', '4', '--out', str(tmp_path),
                             '--domain', '99'],  # outside the suite's per-test domains
                            capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = result.stdout.split('demo report', 1)[1]
    assert ' lost                               0' in report
    assert 'missions acknowledged              1' in report
    progress = [line for line in report.splitlines() if 'task progress reports' in line][0]
    assert int(progress.split()[-1]) >= 1   # the executor started a task of the mission
    # Every frame the stack published reaches rviz's fixed frame: camera, base and site.
    tf = [line for line in report.splitlines() if line.strip().startswith('TF tree')][0]
    assert 'complete: base_link, camera_optical_frame, map all reach base_link' in tf, tf
    html = (tmp_path / 'report.html').read_text()
    assert html.count('<img src="data:image/png;base64,') == 4
