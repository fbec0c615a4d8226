"""The incident index at 10,000 and 1,000,000 vectors: FAISS against exact brute force.

The vectors are 256-d, L2-normalised, like the snapshot job's embeddings (YOLO11n's last
backbone block, pooled). The database is made from real embeddings: the sample photos and
augmented copies of them (the snapshot job, real model) give the directions; every stored
vector is one of them turned by noise, or one of ``--clusters`` random directions the same
way (a fleet's incidents: many near-duplicates of few scenes), so neighbours are as crowded
as in a real index, not uniform noise. Each query is a stored vector perturbed again (a new
near-duplicate of a past incident).

Compared, in the same run, on the same vectors and queries:

* **brute force** (the peer): NumPy, one matrix product over all vectors per query (what a
  project without an index does), and FAISS ``IndexFlatIP`` (exact, SIMD);
* **HNSW32** (the worker's index: no training, grows one vector at a time), efSearch 64
  and 128;
* **IVF** (``IndexIVFFlat``, 4 sqrt(n) lists trained on a sample of 100,000, nprobe 64):
  the choice for batch builds.

Measured: build (add) time, query time per single query (p50/p99 over ``--queries``), recall
at 10 and at 1 against the exact answer, and the index's memory. Asserts nothing.

Run: .venv/bin/python benchmarks/bench_similarity.py [--sizes 10000 1000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cobot_hybrid_planner.offload.similarity import build_faiss  # noqa: E402

DIM = 256


def real_directions(count: int) -> np.ndarray:
    """Embeddings of the sample photos and augmentations (the real snapshot job)."""
    from cobot_hybrid_perception.media import available_samples, sample_photo_path
    from cobot_hybrid_perception.snapshot_analysis import AnalysisConfig, SnapshotJob

    job = SnapshotJob(AnalysisConfig(sizes=(640,), tta=False, threads=2))
    out = []
    names = available_samples()
    per = max(1, count // len(names))
    for n, name in enumerate(names):
        for _, vector in job.embed(sample_photo_path(name).read_bytes(), per - 1, seed=n):
            out.append(vector)
    return np.asarray(out, np.float32)


def database(size: int, seeds: np.ndarray, clusters: int, rng: np.random.Generator
             ) -> np.ndarray:
    random_dirs = rng.normal(size=(clusters, DIM)).astype(np.float32)
    random_dirs /= np.linalg.norm(random_dirs, axis=1, keepdims=True)
    centres = np.concatenate([seeds, random_dirs])
    out = np.empty((size, DIM), np.float32)
    for start in range(0, size, 100_000):
        stop = min(size, start + 100_000)
        picks = centres[rng.integers(0, len(centres), stop - start)]
        noisy = picks + rng.normal(scale=0.03, size=picks.shape).astype(np.float32)  # cos ~0.9
        out[start:stop] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return out


def exact(db: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    """NumPy brute force, one query at a time (the peer): ids and per-query ms."""
    ids, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        scores = db @ q
        top = np.argpartition(-scores, k)[:k]
        ids.append(top[np.argsort(-scores[top])])
        times.append((time.perf_counter() - t0) * 1e3)
    return np.asarray(ids), times


def recall(found: np.ndarray, truth: np.ndarray) -> str:
    """Recall at 10, and at 1 (the nearest found first), against the exact answer."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth,
                                                                      strict=True))
    first = sum(int(f[0] == t[0]) for f, t in zip(found, truth, strict=True))
    return f'{hits / truth.size:.3f} {first / len(truth):.3f}'


def faiss_run(index: object, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    ids, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, found = index.search(q[None], k)   # type: ignore[attr-defined]
        times.append((time.perf_counter() - t0) * 1e3)
        ids.append(found[0])
    return np.asarray(ids), times


def p(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def index_bytes(index: object) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[10_000, 1_000_000])
    parser.add_argument('--queries', type=int, default=200)
    parser.add_argument('--clusters', type=int, default=5000)
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(7)
    t0 = time.perf_counter()
    seeds = real_directions(60)
    print(f'{len(seeds)} real embeddings of the sample photos and their augmentations '
          f'({time.perf_counter() - t0:.1f} s); {args.threads} thread(s)', flush=True)
    k = 10
    print(f'{"vectors":>9} {"index":<18} {"build s":>8} {"query p50 ms":>13} '
          f'{"p99 ms":>8} {"recall@10 @1":>11} {"memory MB":>9}')
    for size in args.sizes:
        db = database(size, seeds, args.clusters, rng)
        base = db[rng.integers(0, size, args.queries)]
        queries = base + rng.normal(scale=0.015, size=base.shape).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        truth, times = exact(db, queries, k)
        print(f'{size:>9} {"numpy brute force":<18} {0.0:>8.1f} {p(times, 0.5):>13.3f} '
              f'{p(times, 0.99):>8.3f} {"1.000 1.000":>11} {db.nbytes / 1e6:>9.0f}', flush=True)
        runs: list[tuple[str, object, float]] = []
        for name, kind, extra in (('faiss Flat (exact)', 'Flat', {}),
                                  ('HNSW32 ef64', 'HNSW32', {'hnsw_ef_search': 64}),
                                  ('IVF nprobe64', 'IVF', {'nprobe': 64})):
            t0 = time.perf_counter()
            train = db[rng.choice(size, min(size, 100_000), replace=False)] \
                if kind == 'IVF' else None
            index = build_faiss(kind, DIM, train, **extra)
            index.add_with_ids(db, np.arange(size, dtype=np.int64))
            runs.append((name, index, time.perf_counter() - t0))
            found, qtimes = faiss_run(index, queries, k)
            print(f'{size:>9} {name:<18} {runs[-1][2]:>8.1f} {p(qtimes, 0.5):>13.3f} '
                  f'{p(qtimes, 0.99):>8.3f} {recall(found, truth):>11} '
                  f'{index_bytes(index) / 1e6:>9.0f}', flush=True)
            if kind == 'HNSW32':
                faiss.downcast_index(index.index).hnsw.efSearch = 128
                found, qtimes = faiss_run(index, queries, k)
                print(f'{size:>9} {"HNSW32 ef128":<18} {"":>8} {p(qtimes, 0.5):>13.3f} '
                      f'{p(qtimes, 0.99):>8.3f} {recall(found, truth):>11}', flush=True)
        del runs, db
    return 0


if __name__ == '__main__':
    sys.exit(main())
