"""Durable queue: real SQLite files, crashes (kill -9), corruption, bounds, the invariant."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cobot_hybrid_bridge.durable_queue import (
    DiskFullError,
    DurableQueue,
    QueueConfig,
    QueueError,
    open_readonly_stats,
)

ROOT = Path(__file__).resolve().parent.parent


def test_seq_is_strictly_increasing_and_survives_a_restart(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / 'q.db')
    seqs = [queue.put('t', b'x') for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    queue.commit()
    queue.ack(seqs)  # even with nothing left in the table, seq must not restart
    queue.close()
    again = DurableQueue(tmp_path / 'q.db')
    assert again.put('t', b'y') == 6
    again.close()


def test_only_committed_messages_are_handed_out(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / 'q.db')
    queue.put('a', b'1')
    assert queue.peek(10) == []
    assert queue.commit() == 1
    (message,) = queue.peek(10)
    assert (message.topic, message.payload, message.qos) == ('a', b'1', 1)
    queue.close()


def test_priority_first_then_order_of_arrival(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / 'q.db')
    low = [queue.put('telemetry', b'%d' % i, priority=0) for i in range(3)]
    high = queue.put('safety', b'stop', priority=9)
    queue.commit()
    assert [m.seq for m in queue.peek(10)] == [high, *low]
    assert [m.seq for m in queue.peek(10, exclude=[high, low[0]])] == low[1:]
    queue.close()


def test_a_reader_continues_from_where_it_is_per_priority(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / 'q.db')
    low = [queue.put('telemetry', b'%d' % i, priority=0) for i in range(4)]
    queue.put('held', b'not committed yet', priority=5)
    assert queue.peek_after(10, {}) == []            # only what is committed
    queue.commit()
    first = queue.peek_after(3, {})
    assert [m.seq for m in first] == [5, *low[:2]]   # priority 5, then the oldest
    read_upto = {m.priority: m.seq for m in first}
    high = queue.put('safety', b'stop', priority=9)
    queue.commit()
    assert [m.seq for m in queue.peek_after(10, read_upto)] == [high, *low[2:]]
    assert [m.seq for m in queue.peek_after(10, read_upto, above=5)] == [high]
    queue.mark_delivered([low[0]])                   # delivered ones are never fetched again
    assert [m.seq for m in queue.get([low[3], low[0], 999])] == [low[3]]
    queue.close()
    again = DurableQueue(tmp_path / 'q.db')          # priorities known after a restart
    assert [m.seq for m in again.peek_after(2, {})] == [high, 5]
    again.close()


def test_ttl_and_byte_cap_drop_the_least_valuable_and_count_it(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / 'q.db', QueueConfig(max_bytes=300, ttl_s=60.0))
    old = queue.put('t', b'o' * 100, priority=5, now_s=1000.0)
    queue.commit()
    assert queue.expire(now_s=1000.0 + 61.0) == 1
    keep = queue.put('safety', b's' * 100, priority=9)
    low = [queue.put('telemetry', b'l' * 100, priority=0) for _ in range(3)]
    queue.commit()  # 400 bytes > 300: the oldest low-priority message goes
    remaining = {m.seq for m in queue.peek(10)}
    assert old not in remaining and keep in remaining and low[0] not in remaining
    stats = queue.stats()
    assert stats.dropped == {'ttl': 1, 'max_bytes': 1, 'rejected': 0, 'corrupt': 0}
    assert stats.queued == 3 and stats.queued_bytes == 300 and stats.balanced
    queue.close()


def test_duplicate_acks_do_not_break_the_books(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / 'q.db')
    seq = queue.put('t', b'x')
    queue.commit()
    assert queue.ack([seq]) == 1
    assert queue.ack([seq]) == 0
    stats = queue.stats()
    assert (stats.committed, stats.delivered, stats.queued) == (1, 1, 0) and stats.balanced
    queue.close()


operations = st.lists(st.one_of(
    st.tuples(st.just('put'), st.integers(0, 3), st.integers(1, 200)),
    st.tuples(st.just('commit'), st.just(0), st.just(0)),
    st.tuples(st.just('ack'), st.integers(0, 5), st.just(0)),
    st.tuples(st.just('reject'), st.integers(0, 2), st.just(0)),
    st.tuples(st.just('expire'), st.integers(0, 100), st.just(0)),
    st.tuples(st.just('reopen'), st.just(0), st.just(0)),
    st.tuples(st.just('mark'), st.integers(0, 5), st.just(0)),    # ack logged, not deleted
    st.tuples(st.just('flush'), st.just(0), st.just(0)),
    st.tuples(st.just('crash'), st.just(0), st.just(0)),          # reopen without close
), max_size=60)


@settings(max_examples=60, deadline=None)
@given(ops=operations)
def test_committed_equals_delivered_plus_queued_plus_dropped(
        tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    path = tmp_path_factory.mktemp('inv') / 'q.db'
    cfg = QueueConfig(max_bytes=1500, ttl_s=50.0)
    queue = DurableQueue(path, cfg)
    now, last_seq = 0.0, 0
    for op, a, b in ops:
        now += 1.0
        if op == 'put':
            seq = queue.put(f't{a}', b'x' * b, priority=a, now_s=now)
            assert seq > last_seq
            last_seq = seq
        elif op == 'commit':
            queue.commit()
        elif op == 'ack':
            queue.ack([m.seq for m in queue.peek(a)])
        elif op == 'reject':
            queue.reject([m.seq for m in queue.peek(a)])
        elif op == 'expire':
            queue.expire(now_s=now + a)
        elif op == 'mark':
            queue.mark_delivered([m.seq for m in queue.peek(a)])
        elif op == 'flush':
            queue.flush_delivered()
        elif op == 'crash':
            queue = DurableQueue(path, cfg)  # what was held is lost; the ack log is not
            last_seq = queue.stats().next_seq - 1  # seqs never committed were never sent
        else:
            queue.close()  # close commits what is held
            queue = DurableQueue(path, cfg)
        stats = queue.stats(now_s=now)
        assert stats.balanced, stats
        assert stats.queued_bytes <= cfg.max_bytes
    queue.close()


def test_logged_acks_hide_messages_and_survive_a_kill(tmp_path: Path) -> None:
    path = tmp_path / 'q.db'
    script = textwrap.dedent("""
        import os, signal, sys
        from cobot_hybrid_bridge.durable_queue import DurableQueue
        queue = DurableQueue(sys.argv[1])
        for _ in range(10):
            queue.put('t', b'x' * 100)
        queue.commit()
        queue.mark_delivered([m.seq for m in queue.peek(4)])
        assert [m.seq for m in queue.peek(10)] == [5, 6, 7, 8, 9, 10]
        stats = queue.stats()
        assert (stats.delivered, stats.queued) == (4, 6), stats
        os.kill(os.getpid(), signal.SIGKILL)   # before any flush
    """)
    killed = subprocess.run([sys.executable, '-c', script, str(path)], cwd=ROOT, check=False,
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert open_readonly_stats(path).delivered == 4          # offline: the log counts too
    with (tmp_path / 'q.db.acks-0').open('ab') as log:
        log.write(b'\x00\x00\x00')                          # a torn record: ignored
    queue = DurableQueue(path)
    stats = queue.stats()
    assert (stats.committed, stats.delivered, stats.queued) == (10, 4, 6) and stats.balanced
    assert [m.seq for m in queue.peek(10)] == [5, 6, 7, 8, 9, 10]
    queue.mark_delivered([5])
    assert queue.flush_delivered() == 1 and queue.stats().delivered == 5
    queue.close()
    assert sorted(p.name for p in tmp_path.iterdir() if '.acks-' in p.name) == []


def test_refused_attempts_are_counted_and_survive_a_restart(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / 'q.db')
    seq = queue.put('t', b'x')
    queue.commit()
    assert [queue.mark_attempt(seq) for _ in range(3)] == [1, 2, 3]
    assert queue.peek(1)[0].attempts == 3
    queue.close()
    queue = DurableQueue(tmp_path / 'q.db')
    assert queue.peek(1)[0].attempts == 3       # from SQLite after a restart
    assert queue.mark_attempt(seq + 100) == 0   # unknown seq
    queue.close()


_WRITER = textwrap.dedent("""
    import sys, time
    from cobot_hybrid_bridge.durable_queue import DurableQueue
    queue = DurableQueue(sys.argv[1])
    count = 0
    while True:
        for _ in range(10):
            queue.put('t', b'x' * 200)
        queue.commit()
        count += 10
        print(count, flush=True)   # printed only after the commit returned
""")


def test_kill_9_loses_nothing_that_was_committed(tmp_path: Path) -> None:
    path = tmp_path / 'q.db'
    writer = subprocess.Popen([sys.executable, '-c', _WRITER, str(path)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert writer.stdout is not None
    confirmed = 0
    for line in writer.stdout:
        confirmed = int(line)
        if confirmed >= 2000:
            break
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    queue = DurableQueue(path)
    stats = queue.stats()
    assert stats.committed >= confirmed and stats.queued == stats.committed
    assert stats.next_seq == stats.committed + 1  # seq carries on after the crash
    assert queue.put('t', b'after') == stats.committed + 1
    queue.close()


def test_a_corrupt_database_is_moved_aside_and_seq_keeps_rising(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture
                                                                ) -> None:
    path = tmp_path / 'q.db'
    queue = DurableQueue(path)
    last = [queue.put('t', b'x') for _ in range(3)][-1]
    queue.close()
    path.write_bytes(b'this is not an SQLite database' * 100)
    fresh = DurableQueue(path)
    assert any('corrupt' in record.message for record in caplog.records)
    assert list(tmp_path.glob('q.db.corrupt-*'))
    assert fresh.put('t', b'y') > last
    assert fresh.stats().queued == 0
    fresh.close()


def test_disk_full_keeps_held_messages_and_resumes(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / 'q.db')
    queue.put('t', b'x')
    queue.commit()
    page_size = queue._db.execute('PRAGMA page_size').fetchone()[0]
    pages = queue._db.execute('PRAGMA page_count').fetchone()[0]
    queue._db.execute(f'PRAGMA max_page_count={pages}')  # the disk is "full" now
    for _ in range(50):
        queue.put('t', b'y' * page_size)
    with pytest.raises(DiskFullError, match='disk full'):
        queue.commit()
    assert queue.disk_full and queue.stats().pending == 50
    assert not (tmp_path / 'q.db.ballast').exists()  # released to let deletes run
    queue._db.execute('PRAGMA max_page_count=1073741823')  # space came back
    assert queue.commit() == 50
    assert not queue.disk_full and queue.stats().balanced
    queue.close()


def test_read_only_stats_and_bad_files(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / 'q.db')
    queue.put('t', b'abc')
    queue.commit()
    queue.close()
    stats = open_readonly_stats(tmp_path / 'q.db')
    assert (stats.committed, stats.queued, stats.queued_bytes) == (1, 1, 3)
    with pytest.raises(QueueError, match='does not exist'):
        open_readonly_stats(tmp_path / 'none.db')
    (tmp_path / 'junk.db').write_bytes(b'junk' * 100)
    with pytest.raises(QueueError, match='not a readable queue'):
        open_readonly_stats(tmp_path / 'junk.db')


@pytest.mark.parametrize(('kwargs', 'message'), [
    ({'synchronous': 'OFF'}, 'synchronous'), ({'ttl_s': 0}, 'ttl_s'),
    ({'max_bytes': 0}, 'max_bytes'),
])
def test_bad_queue_config(kwargs: dict, message: str) -> None:
    with pytest.raises(QueueError, match=message):
        QueueConfig(**kwargs)


def test_wal_mode_and_full_sync_are_really_set(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / 'q.db')
    assert queue._db.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'
    assert queue._db.execute('PRAGMA synchronous').fetchone()[0] == 2  # FULL
    queue.close()
    assert sqlite3.connect(tmp_path / 'q.db').execute('PRAGMA journal_mode').fetchone()[0] \
        == 'wal'


def test_cli_queue_stats(tmp_path: Path) -> None:
    import json as json_module

    queue = DurableQueue(tmp_path / 'q.db')
    seqs = [queue.put('t', b'abcd') for _ in range(3)]
    queue.commit()
    queue.ack(seqs[:1])
    queue.close()
    result = subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', 'queue',
                             'stats', str(tmp_path / 'q.db'), '--json'], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    stats = json_module.loads(result.stdout)
    assert (stats['committed'], stats['delivered'], stats['queued'], stats['balanced']) == \
        (3, 1, 2, True)
    missing = subprocess.run([sys.executable, '-m', 'cobot_hybrid_cli', 'queue',
                              'stats', str(tmp_path / 'nope.db')], capture_output=True,
                             text=True, timeout=60, check=False)
    assert missing.returncode == 2 and 'does not exist' in missing.stderr


def test_read_only_stats_skip_an_ack_log_folded_away_while_they_read(tmp_path: Path) -> None:
    # The reader lists the ack logs, then the owner folds one into the database and deletes
    # it: reading must not fail (the demo's queue monitor crashed on exactly this).
    from cobot_hybrid_bridge import durable_queue

    gone = tmp_path / 'q.db.acks-8'
    kept = tmp_path / 'q.db.acks-9'
    kept.write_bytes((5).to_bytes(8, 'big') + (6).to_bytes(8, 'big') + b'\x00\x01')
    assert durable_queue._logged_seqs([gone, kept]) == [5, 6]
