"""Cloud offload jobs: what a worker hands a job, what a job gives back, how jobs are found.

A worker (``cobot-hybrid worker``, in the cloud) takes uploads from robots through an MQTT 5
shared subscription and runs a **job** on each. Jobs are plugins, found by name in the entry
point group :data:`JOB_GROUP` (as ROS's pluginlib finds controllers), so the worker imports
no package of the job's: ``snapshot`` is perception's
(:mod:`cobot_hybrid_perception.snapshot_analysis`).

A job factory takes its options (``name=value`` text from the worker's command line) and
returns a callable ``job(upload) -> dict`` (JSON: the stored result). A job raises
:class:`JobInputError` when the upload itself is wrong (it goes to the dead-letter record at
once: no retry makes it right); any other exception is retried with backoff, then dead-lettered.
A result may carry ``embedding`` (a list of finite floats): the worker then finds the most
similar past uploads in its vector index, adds this one, and stores the neighbours beside the
result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cobot_hybrid_protocol.errors import ProtocolError

__all__ = ['JOB_GROUP', 'Job', 'JobFactory', 'JobInputError', 'Upload']

JOB_GROUP = 'cobot_hybrid.jobs'


class JobInputError(ProtocolError, ValueError):
    """The upload cannot be processed by this job, ever (retrying would not help)."""


@dataclass(frozen=True)
class Upload:
    """One upload of a robot, as the worker stored it."""

    robot_id: str
    seq: int
    kind: str               # events/<name> or telemetry/<name>
    payload: bytes
    received_s: float       # when the worker took it [unix s]


Job = Callable[[Upload], dict[str, Any]]
JobFactory = Callable[[Mapping[str, str]], Job]
