"""Durable queue: corruption on real files is never a silent loss; wall-clock steps keep ages.

Corruption is made the way it happens: bytes flipped in a data page, a file cut short, a frame
of a crashed writer's WAL damaged. Each test counts, independently of the queue, which
messages were lost, and checks that the queue counts exactly those as dropped ``corrupt``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cobot_hybrid_bridge import durable_queue
from cobot_hybrid_bridge.durable_queue import DurableQueue, QueueConfig, QueueStats
from cobot_hybrid_protocol.clock import SteppableClock

ROOT = Path(__file__).resolve().parent.parent
DAY = 86_400.0


def _payload(seq: int) -> bytes:
    return b'%08d' % seq * 50   # 400 bytes: about nine rows a page, no overflow pages


def _fill(path: Path, count: int, **kwargs: object) -> DurableQueue:
    queue = DurableQueue(path, **kwargs)  # type: ignore[arg-type]
    for _ in range(count):
        queue.put('robot/t', _payload, qos=1, priority=0)
    queue.commit()
    return queue


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """SQLite's varint at ``at``: (value, where the next field starts)."""
    value = 0
    for i in range(9):
        byte = data[at + i]
        if i == 8:
            return (value << 8) | byte, at + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    raise AssertionError('unreachable')


def _seqs_by_leaf_page(path: Path) -> dict[int, list[int]]:
    """Which seqs each leaf page of the messages table holds (read from the file itself)."""
    db = sqlite3.connect(path)
    page_size = db.execute('PRAGMA page_size').fetchone()[0]
    pages = [page for (page,) in db.execute(
        "SELECT pageno FROM dbstat WHERE name = 'messages' AND pagetype = 'leaf'")]
    db.close()
    data = path.read_bytes()
    found: dict[int, list[int]] = {}
    for page in pages:
        base = (page - 1) * page_size
        assert data[base] == 0x0D, 'a table leaf page'
        seqs = []
        for cell in range(int.from_bytes(data[base + 3:base + 5], 'big')):
            pointer = int.from_bytes(data[base + 8 + 2 * cell:base + 10 + 2 * cell], 'big')
            _, at = _varint(data, base + pointer)   # the payload size, then the rowid
            seqs.append(_varint(data, at)[0])
        found[page] = seqs
    return found


def _wal_frames(wal: Path) -> tuple[int, list[tuple[int, int]]]:
    """The page size and the frames of a WAL file: (offset, database size if a commit)."""
    data = wal.read_bytes()
    page_size = int.from_bytes(data[8:12], 'big')
    frames, at = [], 32
    while at + 24 + page_size <= len(data):
        frames.append((at, int.from_bytes(data[at + 4:at + 8], 'big')))
        at += 24 + page_size
    return page_size, frames


def _flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    with path.open('r+b') as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ mask]))


def _assert_books(stats: QueueStats, committed: int, queued: int, corrupt: int) -> None:
    assert stats.balanced, stats
    assert (stats.committed, stats.queued, stats.dropped['corrupt']) == \
        (committed, queued, corrupt), stats


def _queued(queue: DurableQueue) -> dict[int, bytes]:
    return {m.seq: m.payload for m in queue.peek(100_000)}


def _asides(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob('q.db.corrupt-*')
                  if not p.name.endswith(('-wal', '-shm')))


@pytest.fixture(params=['row-salvage', 'sqlite3-shell'])
def recovery(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way of recovering: row by row always; ``.recover`` where the shell can run it."""
    if request.param == 'row-salvage':
        monkeypatch.setattr(durable_queue, '_find_recover_shell',
                            lambda: (None, 'disabled by the test'))
    else:
        shell, why_not = durable_queue._find_recover_shell()
        if shell is None:
            pytest.skip(f'the installed sqlite3 shell cannot run .recover: {why_not}')
    return str(request.param)


# --- corruption -------------------------------------------------------------------------------


def test_a_clean_reopen_is_no_corruption(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                         ) -> None:
    path = tmp_path / 'q.db'
    queue = _fill(path, 30)
    for _ in range(3):
        queue.ack([m.seq for m in queue.peek(4)])
        queue.expire(now_s=0.0)
        queue.put('robot/t', b'late')
        queue.close()
        queue = DurableQueue(path)
        queue.commit()
    stats = queue.stats()
    assert (stats.committed, stats.delivered, stats.queued) == (33, 12, 21) and stats.balanced
    queue.close()
    assert _asides(tmp_path) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert (tmp_path / 'q.db.books').stat().st_size == 68


_CRASHING_WRITER = textwrap.dedent("""
    import sys
    from cobot_hybrid_bridge.durable_queue import DurableQueue
    queue = DurableQueue(sys.argv[1])
    queue._db.execute(f'PRAGMA wal_autocheckpoint={sys.argv[2]}')
    for _ in range(int(sys.argv[3])):
        for _ in range(10):
            queue.put('robot/t', lambda seq: b'%08d' % seq * 50)
        queue.commit()
    print('committed', flush=True)
    sys.stdin.read()            # killed here, the WAL not checkpointed
""")


def _crash_writer(path: Path, autocheckpoint: int, commits: int) -> None:
    """Commit ``commits`` x 10 messages in another process, then SIGKILL it."""
    writer = subprocess.Popen([sys.executable, '-c', _CRASHING_WRITER, str(path),
                               str(autocheckpoint), str(commits)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert writer.stdout is not None
    assert writer.stdout.readline() == 'committed\n'
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    assert writer.returncode == -signal.SIGKILL


def test_a_crashed_writers_wal_is_no_corruption(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / 'q.db'
    _crash_writer(path, autocheckpoint=8, commits=60)   # the WAL restarted many times:
    wal = Path(f'{path}-wal').read_bytes()              # frames of older generations follow
    _, frames = _wal_frames(Path(f'{path}-wal'))        # the current ones (other salts)
    assert len({wal[at + 8:at + 16] for at, _ in frames}) >= 2
    queue = DurableQueue(path)
    _assert_books(queue.stats(), committed=600, queued=600, corrupt=0)
    assert sorted(_queued(queue)) == list(range(1, 601))
    queue.close()
    assert _asides(tmp_path) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_garbage_over_the_whole_file_counts_every_message_lost(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / 'q.db'
    _fill(path, 5).close()
    path.write_bytes(b'this is not an SQLite database' * 100)
    queue = DurableQueue(path)
    _assert_books(queue.stats(), committed=5, queued=0, corrupt=5)
    assert queue.put('robot/t', b'after') == 6            # the books file knew the next seq
    queue.close()
    assert len(_asides(tmp_path)) == 1
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert 'moved q.db aside' in error.message and '5 committed messages were lost' in \
        error.message


def test_flipped_bytes_in_a_data_page_lose_exactly_that_pages_rows(
        tmp_path: Path, recovery: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / 'q.db'
    queue = _fill(path, 120)
    queue.mark_attempt(7)
    queue.ack([1, 2])                      # delivered ones stay counted as delivered
    queue.close()
    original = {seq: _payload(seq) for seq in range(3, 121)}
    pages = _seqs_by_leaf_page(path)
    page, lost = sorted(pages.items())[len(pages) // 2]   # a page in the middle of the table
    assert 1 < len(lost) < 100
    page_size = 4096
    for offset in range(0, 5):             # its b-tree page header: page type, cell count
        _flip(path, (page - 1) * page_size + offset)
    queue = DurableQueue(path)
    stats = queue.stats()
    _assert_books(stats, committed=120, queued=118 - len(lost), corrupt=len(lost))
    assert stats.delivered == 2
    assert _queued(queue) == {seq: data for seq, data in original.items() if seq not in lost}
    assert queue.peek(1)[0].seq == 3 and queue.get([7])[0].attempts == 1
    assert queue.put('robot/t', b'after') == 121
    queue.close()
    assert len(_asides(tmp_path)) == 1
    assert not list(tmp_path.glob('*.recovering'))
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f'{len(lost)} committed messages were lost' in error.message
    method = 'sqlite3 shell' if recovery == 'sqlite3-shell' else 'row by row'
    assert method in error.message


def test_a_file_cut_to_half_keeps_the_first_half(tmp_path: Path, recovery: str) -> None:
    path = tmp_path / 'q.db'
    _fill(path, 300).close()
    pages = _seqs_by_leaf_page(path)
    size = path.stat().st_size
    kept_pages = size // 4096 // 2
    with path.open('r+b') as handle:
        handle.truncate(kept_pages * 4096)
    kept = sorted(seq for page, seqs in pages.items() if page <= kept_pages for seq in seqs)
    assert 0 < len(kept) < 300
    queue = DurableQueue(path)
    _assert_books(queue.stats(), committed=300, queued=len(kept), corrupt=300 - len(kept))
    assert _queued(queue) == {seq: _payload(seq) for seq in kept}
    assert queue.put('robot/t', b'after') == 301
    queue.close()


def _copy_queue(path: Path, to: Path, wal_bytes: int | None = None) -> Path:
    """A copy of a queue file and its WAL (cut to ``wal_bytes``), opened by nobody."""
    to.mkdir()
    shutil.copyfile(path, to / 'q.db')
    wal = Path(f'{path}-wal').read_bytes()
    (to / 'q.db-wal').write_bytes(wal if wal_bytes is None else wal[:wal_bytes])
    return to / 'q.db'


def _rows_sqlite_reads(path: Path) -> tuple[str, int, int]:
    db = sqlite3.connect(path)
    try:
        return (db.execute('PRAGMA quick_check').fetchone()[0],
                db.execute('SELECT COUNT(*) FROM messages').fetchone()[0],
                db.execute("SELECT value FROM counters WHERE name = 'committed'").fetchone()[0])
    finally:
        db.close()


def test_a_damaged_wal_frame_is_found_and_the_rest_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / 'q.db'
    _crash_writer(path, autocheckpoint=0, commits=10)   # 100 messages, all in the WAL
    wal = Path(f'{path}-wal')
    _, frames = _wal_frames(wal)
    commits = [i for i, (_, size) in enumerate(frames) if size]
    damaged = commits[-4] + 1              # the first frame of the third-last transaction
    offset = frames[damaged][0]
    _flip(wal, offset + 24 + 1000)         # a byte of its page
    # What SQLite makes of it: the WAL ends before that frame, quietly, and looks fine.
    expected = _rows_sqlite_reads(_copy_queue(path, tmp_path / 'oracle', wal_bytes=offset))[1]
    assert expected == 70
    assert _rows_sqlite_reads(_copy_queue(path, tmp_path / 'plain')) == ('ok', 70, 70)
    found = wal.read_bytes()
    queue = DurableQueue(path)
    _assert_books(queue.stats(), committed=100, queued=70, corrupt=30)
    assert sorted(_queued(queue)) == list(range(1, 71))
    assert queue.put('robot/t', b'after') == 101
    queue.close()
    (aside,) = _asides(tmp_path)
    assert Path(f'{aside}-wal').read_bytes() == found      # kept as it was found
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f'frame {damaged + 1} of q.db-wal fails its checksum' in error.message
    assert '30 committed messages were lost' in error.message


def test_a_damaged_last_commit_is_found_by_the_books_file(tmp_path: Path) -> None:
    path = tmp_path / 'q.db'
    _crash_writer(path, autocheckpoint=0, commits=10)
    wal = Path(f'{path}-wal')
    _, frames = _wal_frames(wal)
    _flip(wal, frames[-1][0] + 24 + 1000)   # the last transaction's commit frame: no frame
    queue = DurableQueue(path)             # follows it, only the books file tells
    _assert_books(queue.stats(), committed=100, queued=90, corrupt=10)
    assert sorted(_queued(queue)) == list(range(1, 91))
    assert queue.put('robot/t', b'after') == 101
    queue.close()


def test_a_commit_writes_the_books_file_once_and_syncs_nothing_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = DurableQueue(tmp_path / 'q.db')
    calls: list[str] = []
    pwrite, fsync = os.pwrite, os.fsync
    monkeypatch.setattr(os, 'pwrite', lambda fd, data, at: calls.append('pwrite')
                        or pwrite(fd, data, at))
    monkeypatch.setattr(os, 'fsync', lambda fd: calls.append('fsync') or fsync(fd))
    for _ in range(50):
        queue.put('robot/t', b'x')
    queue.commit()
    assert calls == ['pwrite']
    queue.ack([1, 2])
    assert calls == ['pwrite'] * 2
    monkeypatch.undo()
    queue.close()
    assert durable_queue._read_books(tmp_path / 'q.db.books') == {
        'committed': 50, 'delivered': 2, 'dropped_ttl': 0, 'dropped_max_bytes': 0,
        'dropped_rejected': 0, 'dropped_corrupt': 0, 'next_seq': 51}


def test_a_deleted_database_keeps_seq_rising(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / 'q.db'
    _fill(path, 5).close()
    path.unlink()
    queue = DurableQueue(path)
    assert queue.put('robot/t', b'after') == 6
    _assert_books(queue.stats(), committed=0, queued=0, corrupt=0)   # a new queue
    queue.close()
    assert 'is missing but its books file says 5 messages were committed' in caplog.text


def test_a_garbage_books_file_is_ignored(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / 'q.db'
    _fill(path, 10).close()
    books = tmp_path / 'q.db.books'
    books.write_bytes(os.urandom(300))
    queue = DurableQueue(path)
    _assert_books(queue.stats(), committed=10, queued=10, corrupt=0)
    assert _asides(tmp_path) == []
    assert 'torn or not a books file' in caplog.text
    queue.close()
    assert durable_queue._read_books(books) == {
        'committed': 10, 'delivered': 0, 'dropped_ttl': 0, 'dropped_max_bytes': 0,
        'dropped_rejected': 0, 'dropped_corrupt': 0, 'next_seq': 11}   # rewritten whole


def test_a_torn_books_file_is_ignored_when_recovering(tmp_path: Path) -> None:
    path = tmp_path / 'q.db'
    _fill(path, 120).close()
    pages = _seqs_by_leaf_page(path)
    page, lost = sorted(pages.items())[2]
    _flip(path, (page - 1) * 4096)
    books = tmp_path / 'q.db.books'
    _flip(books, 20)                                  # its CRC no longer matches
    queue = DurableQueue(path)                        # the recovered counters count
    _assert_books(queue.stats(), committed=120, queued=120 - len(lost), corrupt=len(lost))
    queue.close()


def test_when_nothing_is_known_the_loss_is_not_counted_but_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / 'q.db'
    _fill(path, 5).close()
    path.write_bytes(b'\0' * 8192)
    (tmp_path / 'q.db.books').write_bytes(b'garbage')
    clock = SteppableClock()
    queue = DurableQueue(path, clock=clock)
    _assert_books(queue.stats(), committed=0, queued=0, corrupt=0)
    assert queue.put('robot/t', b'after') == int(clock.wall() * 1e6)   # above anything before
    queue.close()
    assert 'the loss could not be counted' in caplog.text


def test_invalid_rows_are_not_recovered(tmp_path: Path) -> None:
    path = tmp_path / 'q.db'
    _fill(path, 20).close()
    db = sqlite3.connect(path)                      # rows the queue could never have written
    db.execute('UPDATE messages SET qos = 7 WHERE seq = 3')
    db.execute('UPDATE messages SET size = 1 WHERE seq = 4')
    db.execute("UPDATE messages SET payload = 'text' WHERE seq = 5")
    db.execute("UPDATE messages SET topic = CAST(x'726f626f742fff' AS TEXT) WHERE seq = 6")
    db.commit()
    db.close()
    queue = DurableQueue(path)
    _assert_books(queue.stats(), committed=20, queued=16, corrupt=4)
    assert sorted(_queued(queue)) == [1, 2, *range(7, 21)]   # peek never meets a bad topic
    queue.close()


_FAKE_SHELL = textwrap.dedent("""\
    import os, sqlite3, sys
    args = sys.argv[1:]
    if args[-1] == '.recover':                       # what a real shell's .recover writes
        if os.environ.get('FAKE_RECOVER_FAILS'):
            print('BEGIN;')
            sys.exit('sql error: no such table: sqlite_dbpage')
        sys.stdout.write(open(os.environ['FAKE_RECOVER_SQL']).read())
    elif args[-1].startswith('SELECT'):              # the capability probe
        print(0)
    else:                                            # loading the recovered SQL
        sqlite3.connect(args[0]).executescript(sys.stdin.read())
""")

_RECOVERED_SQL = """\
BEGIN;
CREATE TABLE messages (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, priority INTEGER NOT NULL, retain INTEGER NOT NULL,
    created_s REAL NOT NULL, size INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0);
INSERT INTO messages VALUES (1, 'robot/t', x'61', 1, 0, 0, 10.5, 1, 0);
INSERT INTO messages VALUES (2, 'robot/t', x'6262', 7, 0, 0, 10.5, 2, 0);
INSERT INTO messages VALUES (3, 'robot/t', x'63', 1, 0, 0, 10.5, 5, 0);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters VALUES ('committed', 9), ('delivered', 2), ('next_seq', 10);
CREATE TABLE lost_and_found (rootpgno INTEGER, pgno INTEGER, nfield INTEGER, id INTEGER,
    c0, c1, c2, c3, c4, c5, c6, c7, c8);
INSERT INTO lost_and_found VALUES (2, 9, 9, 6, NULL, 'robot/s', x'7a7a', 2, 5, 1, 11.0, 2, 3);
INSERT INTO lost_and_found VALUES (2, 9, 2, 7, 'committed', 99, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL);
COMMIT;
"""


@pytest.fixture
def fake_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An sqlite3 shell that can run .recover: none can run here (Debian's lacks dbpage)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    shell = bin_dir / 'sqlite3'
    shell.write_text(f'#!{sys.executable}\n{_FAKE_SHELL}')
    shell.chmod(shell.stat().st_mode | stat.S_IXUSR)
    (tmp_path / 'recovered.sql').write_text(_RECOVERED_SQL)
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    monkeypatch.setenv('FAKE_RECOVER_SQL', str(tmp_path / 'recovered.sql'))
    return shell


def test_what_recover_writes_is_read_and_validated(tmp_path: Path, fake_shell: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / 'q.db'
    _fill(path, 3).close()
    path.write_bytes(b'garbage' * 1000)
    (tmp_path / 'q.db.books').unlink()
    queue = DurableQueue(path)
    # Rows 1 and 6 (from lost_and_found) are valid; 2 (qos 7) and 3 (size) are not.
    assert {m.seq: (m.topic, m.payload, m.qos, m.priority, m.retain, m.attempts)
            for m in queue.peek(10)} == {6: ('robot/s', b'zz', 2, 5, True, 3),
                                         1: ('robot/t', b'a', 1, 0, False, 0)}
    _assert_books(queue.stats(), committed=9, queued=2, corrupt=5)   # 9 - 2 delivered - 2
    assert queue.put('robot/t', b'after') == 10
    queue.close()
    assert f'sqlite3 shell .recover ({fake_shell})' in caplog.text
    assert '2 unreadable ranges or invalid rows skipped' in caplog.text
    assert not list(tmp_path.glob('*.recovering'))


def test_a_failing_recover_falls_back_to_rows_and_says_so(
        tmp_path: Path, fake_shell: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv('FAKE_RECOVER_FAILS', '1')
    path = tmp_path / 'q.db'
    _fill(path, 40).close()
    page, lost = sorted(_seqs_by_leaf_page(path).items())[1]
    _flip(path, (page - 1) * 4096)
    queue = DurableQueue(path)
    _assert_books(queue.stats(), committed=40, queued=40 - len(lost), corrupt=len(lost))
    queue.close()
    assert 'sqlite3 .recover failed' in caplog.text and 'row by row' in caplog.text


corruptible_ops = st.lists(st.one_of(
    st.tuples(st.just('put'), st.integers(0, 3), st.integers(1, 600)),
    st.tuples(st.just('commit'), st.just(0), st.just(0)),
    st.tuples(st.just('ack'), st.integers(0, 5), st.just(0)),
    st.tuples(st.just('expire'), st.integers(0, 100), st.just(0)),
), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=corruptible_ops, where=st.floats(0.0, 1.0, exclude_max=True),
       mask=st.integers(1, 255))
@example(ops=[], where=0.18359375, mask=128)   # SQLite quoted non-UTF-8 schema text
def test_any_flipped_byte_at_rest_keeps_the_books(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int]],
        where: float, mask: int) -> None:
    path = tmp_path_factory.mktemp('flip') / 'q.db'
    clock = SteppableClock()
    queue = DurableQueue(path, QueueConfig(max_bytes=20_000, ttl_s=50.0), clock=clock)
    last_seq = 0
    for op, a, b in ops:
        clock.advance(1.0)
        if op == 'put':
            last_seq = queue.put(f't{a}', b'x' * b, priority=a)
        elif op == 'commit':
            queue.commit()
        elif op == 'ack':
            queue.ack([m.seq for m in queue.peek(a)])
        else:
            clock.advance(a)
            queue.expire()
    queue.close()
    before = durable_queue._read_books(path.with_name('q.db.books'))
    assert before is not None
    _flip(path, int(where * path.stat().st_size), mask)
    queue = DurableQueue(path, QueueConfig(max_bytes=20_000, ttl_s=50.0), clock=clock)
    stats = queue.stats()
    assert stats.balanced, stats
    assert stats.committed >= before['committed']
    assert queue.put('t', b'after') > last_seq
    assert queue.commit() == 1
    queue.peek(1000)
    queue.close()


# --- wall-clock steps -------------------------------------------------------------------------


def _ages(queue: DurableQueue, clock: SteppableClock) -> list[float]:
    return [round(clock.wall() - m.created_s, 6) for m in queue.peek(1000)]


def test_a_forward_step_of_two_days_expires_nothing(tmp_path: Path) -> None:
    clock = SteppableClock()
    queue = DurableQueue(tmp_path / 'q.db', QueueConfig(ttl_s=3600.0), clock=clock)
    for _ in range(20):
        queue.put('robot/t', b'x')
        clock.advance(10.0)
    queue.commit()
    queue.put('robot/t', b'held')                   # not committed when the clock jumps
    clock.advance(5.0)
    assert _ages(queue, clock)[:2] == [205.0, 195.0]
    clock.step_wall(2 * DAY)
    assert queue.check_clock() == 2 * DAY
    assert queue.check_clock() == 0.0
    assert queue.expire() == 0
    queue.commit()
    ages = _ages(queue, clock)
    assert ages[:2] == [205.0, 195.0] and ages[-1] == 5.0 and min(ages) > 0
    assert queue.stats().oldest_age_s == pytest.approx(205.0)
    clock.advance(3600.0 - 100.0)                   # real ageing still expires by the TTL
    assert queue.expire() == 11                     # those older than an hour now
    clock.advance(200.0)
    assert queue.expire() == 10
    stats = queue.stats()
    assert stats.dropped['ttl'] == 21 and stats.queued == 0 and stats.balanced
    queue.close()


def test_a_step_seen_first_by_put_shifts_only_what_came_before(tmp_path: Path) -> None:
    clock = SteppableClock()
    queue = DurableQueue(tmp_path / 'q.db', QueueConfig(ttl_s=3600.0), clock=clock)
    queue.put('robot/t', b'old')
    queue.commit()
    queue.put('robot/t', b'held')
    clock.advance(30.0)
    clock.step_wall(-2 * DAY)                       # back by two days, before the bridge's tick
    queue.put('robot/t', b'new')                    # stamped by the new clock
    queue.commit()
    assert _ages(queue, clock) == [30.0, 30.0, 0.0]
    assert queue.check_clock() == -2 * DAY           # still reported once
    assert queue.expire() == 0
    queue.close()


def test_a_backward_step_stalls_nothing(tmp_path: Path) -> None:
    clock = SteppableClock()
    queue = DurableQueue(tmp_path / 'q.db', QueueConfig(ttl_s=600.0), clock=clock)
    first = [queue.put('robot/t', b'%d' % i) for i in range(5)]
    queue.commit()
    clock.advance(100.0)
    clock.step_wall(-300.0)
    assert queue.check_clock() == -300.0
    later = [queue.put('robot/t', b'%d' % i) for i in range(5)]
    assert queue.commit() == 5
    ages = _ages(queue, clock)
    assert ages == [100.0] * 5 + [0.0] * 5          # unchanged, never negative
    assert [m.seq for m in queue.peek_after(100, {})] == first + later
    clock.advance(501.0)
    assert queue.expire() == 5                      # the first five are 601 s old now
    assert queue.stats().oldest_age_s == pytest.approx(501.0)
    queue.close()


def test_rebase_shifts_rows_and_held_messages(tmp_path: Path) -> None:
    clock = SteppableClock()
    queue = DurableQueue(tmp_path / 'q.db', clock=clock)
    for _ in range(3):
        queue.put('robot/t', b'x')
    queue.commit()
    queue.put('robot/t', b'held')
    assert queue.rebase(-42.0) == 4
    queue.commit()
    assert {m.created_s for m in queue.peek(10)} == {clock.wall() - 42.0}
    queue.close()


def test_a_step_while_closed_is_rebased_on_open_in_the_same_boot(tmp_path: Path) -> None:
    path, clock = tmp_path / 'q.db', SteppableClock()
    cfg = QueueConfig(ttl_s=3600.0)
    queue = DurableQueue(path, cfg, clock, boot_id_reader=lambda: 'boot-a')
    for _ in range(4):
        queue.put('robot/t', b'x')
    queue.commit()
    queue.close()
    clock.advance(50.0)
    clock.step_wall(DAY)                            # NTP stepped it while the bridge was down
    queue = DurableQueue(path, cfg, clock, boot_id_reader=lambda: 'boot-a')
    assert _ages(queue, clock) == [50.0] * 4
    assert queue.expire() == 0
    queue.close()
    clock.step_wall(DAY)                            # after a reboot: nothing can be told
    queue = DurableQueue(path, cfg, clock, boot_id_reader=lambda: 'boot-b')
    assert _ages(queue, clock) == [DAY + 50.0] * 4
    queue.close()
    clock.step_wall(-DAY)                           # the boot id unreadable: no rebase either
    queue = DurableQueue(path, cfg, clock, boot_id_reader=lambda: None)
    assert _ages(queue, clock) == [50.0] * 4
    queue.close()


def test_the_boot_id_is_read_from_the_kernel() -> None:
    boot_id = durable_queue.read_boot_id()
    if Path('/proc/sys/kernel/random/boot_id').exists():
        assert boot_id is not None and len(boot_id) == 36
    else:
        assert boot_id is None
