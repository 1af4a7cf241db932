"""Atomic file writes: a reader never sees a half-written file, a failed write leaves none."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["atomic_path", "write_atomic"]


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it replaces ``dest`` in one rename.

    The temporary keeps ``dest``'s suffix(es) so writers that pick a format from the name work.
    On any error the temporary is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(dest.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part" + suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(dest: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        write(tmp)
    return Path(dest)
