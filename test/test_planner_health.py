"""`cobot-hybrid planner-health`: the cloud container's health check, on real files."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path


def health(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', 'planner-health',
                           '--data-dir', str(data_dir)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_a_writable_folder_with_sound_stores_is_healthy(tmp_path: Path) -> None:
    folder = tmp_path / 'planner'
    assert health(folder).returncode == 0   # created on first use
    db = sqlite3.connect(folder / 'ledger.db')
    db.execute('CREATE TABLE t (x)')
    db.execute('INSERT INTO t VALUES (1)')
    db.commit()
    db.close()
    result = health(folder)
    assert result.returncode == 0 and 'healthy' in result.stdout, result


def test_a_corrupt_ledger_or_a_read_only_folder_is_unhealthy(tmp_path: Path) -> None:
    folder = tmp_path / 'planner'
    folder.mkdir()
    (folder / 'ledger.db').write_bytes(b'SQLite format 3\x00' + b'\xff' * 4000)
    result = health(folder)
    assert result.returncode == 2 and 'ledger.db' in result.stderr, result
    (folder / 'ledger.db').unlink()
    blocker = tmp_path / 'not-a-folder'
    blocker.write_text('a file where the folder should be')
    result = health(blocker)
    assert result.returncode == 2 and 'takes no writes' in result.stderr, result
