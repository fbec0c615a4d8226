"""Past incidents by likeness: image embeddings in a FAISS index, kept in SQLite.

Each analysed snapshot adds its embedding (L2-normalised, so inner product = cosine
similarity); the reference database (``cobot-hybrid worker build-index``: real photos and
their augmentations) adds labelled ones. A search returns the ``k`` most similar stored
vectors with who sent them and their label.

* **SQLite is the record** (``vectors``: id, robot, seq, label, the float32 bytes); each
  worker's FAISS index is a cache of it, caught up before every search with the rows other
  replicas added (ids only grow), so two replicas answer alike;
* **the index scales**: ``Flat`` (exact) is the reference; ``HNSW32`` (the default: no
  training, incremental adds, efSearch 128) or ``IVF`` (trained once) are the approximate
  ones, measured against exact search in ``benchmarks/bench_similarity.py`` (recall and
  query time at 10k and 1M: docs/offload.md);
* a vector that is not finite, or of another dimension, is refused
  (:class:`SimilarityError`), never stored; a stored row that is not (another model's, a
  damaged one) is skipped and counted (``skipped``), never ends a search.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cobot_hybrid_planner.errors import PlannerError

__all__ = ['INDEX_KINDS', 'IncidentIndex', 'Neighbour', 'SimilarityError', 'build_faiss']

_LOG = logging.getLogger('cobot_hybrid.similarity')
INDEX_KINDS = ('Flat', 'HNSW32', 'IVF')
_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY,
    robot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    label TEXT NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (robot_id, seq)
);
"""


class SimilarityError(PlannerError, ValueError):
    """A vector cannot go into the index (dimension, not finite), or the index is unusable."""


@dataclass(frozen=True)
class Neighbour:
    """A stored vector close to the query."""

    id: int
    robot_id: str
    seq: int
    label: str
    similarity: float       # cosine similarity, 1.0 = the same direction

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {'robot_id': self.robot_id, 'seq': self.seq, 'label': self.label,
                'similarity': round(self.similarity, 4)}


def build_faiss(kind: str, dim: int, train: npt.NDArray[np.float32] | None = None,
                nlist: int = 0, hnsw_ef_search: int = 128, nprobe: int = 64) -> Any:
    """Return an empty FAISS index of ``kind`` over inner product (IVF: trained on ``train``)."""
    import faiss

    index: Any
    if kind == 'Flat':
        index = faiss.IndexFlatIP(dim)
    elif kind == 'HNSW32':
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 40
        index.hnsw.efSearch = hnsw_ef_search
    elif kind == 'IVF':
        if train is None or len(train) < 39:
            raise SimilarityError('an IVF index is trained on at least 39 vectors')
        nlist = nlist or max(1, min(4096, int(4 * np.sqrt(len(train)))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.referenced_objects = [quantizer]   # the quantizer lives as long as the index
        index.train(np.ascontiguousarray(train, np.float32))
        index.nprobe = nprobe
    else:
        raise SimilarityError(f'index kind {kind!r}: use one of {", ".join(INDEX_KINDS)}')
    return faiss.IndexIDMap2(index) if kind != 'HNSW32' else faiss.IndexIDMap(index)


class IncidentIndex:
    """The group's stored embeddings (SQLite) and this process's FAISS cache of them."""

    def __init__(self, path: Path, dim: int, kind: str = 'HNSW32') -> None:
        if kind == 'IVF':
            raise SimilarityError('the worker index grows one vector at a time: use Flat or '
                                  'HNSW32 (IVF is for the benchmark: it is trained once)')
        self.path, self.dim, self.kind = Path(path), int(dim), kind
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False, timeout=30.0)
            self._db.execute('PRAGMA journal_mode=WAL')
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise SimilarityError(f'the vector store {self.path} is unusable ({exc}): move it '
                                  'aside; `cobot-hybrid worker build-index` and new snapshots '
                                  'fill a new one') from None
        self._index = build_faiss(kind, self.dim)
        self._seen = 0          # the highest row id in the FAISS cache
        self.skipped = 0        # stored rows that could not go into it (counted, logged)

    def close(self) -> None:
        """Close the store."""
        with self._lock:
            self._db.close()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute('SELECT COUNT(*) FROM vectors').fetchone()[0])

    def _vector(self, values: Any) -> npt.NDArray[np.float32]:
        vector = np.asarray(values, np.float32).reshape(-1)
        if vector.shape[0] != self.dim or not np.isfinite(vector).all():
            raise SimilarityError(f'an embedding must be {self.dim} finite numbers (got '
                                  f'{vector.shape[0]})')
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:
            raise SimilarityError('an embedding of zeros has no direction')
        normed: npt.NDArray[np.float32] = vector / norm
        return normed

    def _catch_up(self) -> None:
        rows = self._db.execute('SELECT id, vector FROM vectors WHERE id > ? ORDER BY id',
                                (self._seen,)).fetchall()
        if not rows:
            return
        width = 4 * self.dim
        good = [r for r in rows if isinstance(r[1], bytes) and len(r[1]) == width]
        if len(good) < len(rows):   # another dimension (another model), a damaged row
            self.skipped += len(rows) - len(good)
            _LOG.error('vector store %s: %d row(s) are not %d float32 values: skipped (was '
                       'build-index run with another model or embed_layer?)', self.path,
                       len(rows) - len(good), self.dim)
        if good:
            ids = np.array([r[0] for r in good], np.int64)
            vectors = np.frombuffer(b''.join(r[1] for r in good), np.float32).reshape(-1,
                                                                                     self.dim)
            finite = np.isfinite(vectors).all(axis=1)
            self.skipped += int((~finite).sum())
            if finite.any():
                self._index.add_with_ids(np.ascontiguousarray(vectors[finite]), ids[finite])
        self._seen = int(rows[-1][0])

    def add(self, robot_id: str, seq: int, label: str, values: Any) -> bool:
        """Store one vector; False if ``(robot_id, seq)`` is stored already."""
        vector = self._vector(values)
        with self._lock:
            added = self._db.execute('INSERT OR IGNORE INTO vectors (robot_id, seq, label, '
                                     'vector) VALUES (?, ?, ?, ?)',
                                     (robot_id, seq, label[:200], vector.tobytes())).rowcount
        return bool(added)

    def search(self, values: Any, k: int = 5, exclude: tuple[str, int] | None = None
               ) -> list[Neighbour]:
        """Return the ``k`` stored vectors most like ``values`` (``exclude``: not this one)."""
        vector = self._vector(values)
        with self._lock:
            self._catch_up()
            if self._index.ntotal == 0:
                return []
            scores, ids = self._index.search(vector[None], k + (1 if exclude else 0))
            found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True)
                     if i >= 0]
            if not found:
                return []
            marks = ','.join('?' * len(found))
            meta = {r[0]: r[1:] for r in self._db.execute(
                f'SELECT id, robot_id, seq, label FROM vectors WHERE id IN ({marks})',
                [i for i, _ in found])}
        out = [Neighbour(i, meta[i][0], meta[i][1], meta[i][2], s) for i, s in found
               if i in meta and (exclude is None or tuple(meta[i][:2]) != exclude)]
        return out[:k]
