"""Cloud offload jobs: what robots upload, analysed by worker replicas (``cobot-hybrid worker``).

* :mod:`.worker`: the replica (shared subscription, job threads, status and metrics);
* :mod:`.job_ledger`: the group's jobs, leases, results and dead letters (SQLite);
* :mod:`.similarity`: the incident embeddings (FAISS over SQLite);
* :mod:`.worker_cli`: ``cobot-hybrid worker run|status|dead|retry|build-index|search``.

The jobs themselves are plugins (:mod:`cobot_hybrid_protocol.offload`); ``snapshot`` is
perception's :mod:`cobot_hybrid_perception.snapshot_analysis`. docs/offload.md.
"""
