"""The cloud's copy of the model files being rolled out, served in chunks to the robots. No MQTT.

Files are kept by content (``<sha256>.onnx`` in a folder beside the rollout store): one copy
per version whatever the number of rollouts. :meth:`BlobStore.add` copies a file in and
checks its sha256 against what the rollout will tell the robots (a mismatch is refused here,
not discovered by twenty robots); :meth:`BlobStore.chunks` reads the window a robot asked for.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_protocol.model_update import BlobRequest, ModelRef, file_digest

__all__ = ['BlobError', 'BlobStore']


class BlobError(PlannerError, ValueError):
    """A model file is missing, or is not the file its sha256 names."""


class BlobStore:
    """Model files by sha256 in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the file of ``sha256`` is (or would be)."""
        return self.folder / f'{sha256}.onnx'

    def has(self, sha256: str) -> bool:
        """Whether the file is here."""
        return self.path(sha256).is_file()

    def add(self, source: Path, ref: ModelRef, check: bool = True) -> Path:
        """Copy ``source`` in as ``ref``'s file; BlobError when size or sha256 differ.

        ``check=False`` stores it whatever its digest (tests of what robots do with a file
        that does not match its command).
        """
        target = self.path(ref.sha256)
        size = source.stat().st_size
        if check:
            if size != ref.size_bytes:
                raise BlobError(f'{source} has {size} bytes, {ref.label} says {ref.size_bytes}')
            actual, _ = file_digest(source)
            if actual != ref.sha256:
                raise BlobError(f'{source} is sha256 {actual}, not {ref.sha256} ({ref.label}): '
                                'register the file again or fix the card')
        if not target.is_file():
            tmp = target.with_suffix('.tmp')
            shutil.copyfile(source, tmp)
            with open(tmp, 'rb') as handle:
                os.fsync(handle.fileno())
            tmp.replace(target)
        return target

    def chunks(self, request: BlobRequest) -> Iterator[tuple[int, bytes]]:
        """``(offset, bytes)`` of each chunk of the window asked for (nothing past the end)."""
        path = self.path(request.sha256)
        with open(path, 'rb') as handle:
            handle.seek(request.offset)
            offset, end = request.offset, request.offset + request.length
            while offset < end:
                data = handle.read(min(request.chunk_bytes, end - offset))
                if not data:
                    return
                yield offset, data
                offset += len(data)
