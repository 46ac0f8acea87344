"""Files that hold something sensitive (keys, face crops, voice clips) are created 0600."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRIVATE_MODE", "write_private", "ensure_private"]

PRIVATE_MODE = 0o600


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (replaced atomically), readable by its owner only."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, PRIVATE_MODE)  # O_CREAT's mode does not apply to a file left over from before
    os.replace(tmp, path)


def ensure_private(path: Path) -> None:
    """Create ``path`` empty if absent and make it (and its SQLite side files, if any) owner-only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_MODE)
    os.close(fd)
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"),
              path.with_name(path.name + "-journal")):
        if p.exists():
            os.chmod(p, PRIVATE_MODE)
