"""Atomic file writes: a reader never sees a half-written file, a failed write leaves none.

Each write goes into a private hidden folder beside the target, named
``.NAME.nf-HOST-PID-RANDOM.part`` (``HOST`` a short hash of the host name, ``PID`` the writing
process), and is renamed onto the target in one step. Everything a writer makes on the way (the
file itself, a library's own ``.tmpXXXX`` file, a scratch zarr) lives in that folder and goes with
it. A process killed mid-write leaves that folder behind; the first write of a later process into
the same folder removes such leftovers when their process is gone (same host) or when they have not
changed for :data:`STALE_SECONDS` (another host, or no way to tell).

Final files get the permissions a newly created file gets (``0o666 & ~umask``; folders
``0o777 & ~umask``), not the 0600 of a temporary file. Errors name the target path, not the
temporary one.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["atomic_path", "write_atomic", "remove_stale_parts", "part_folder_name", "STALE_SECONDS"]

STALE_SECONDS = 3600.0  # leftovers of another host (or of unknown origin) untouched this long are removed

_PART = re.compile(r"^\..*\.nf-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]+\.part$")
# names of earlier versions (mkstemp ``.NAME.XXXXXXXX.part.EXT``, ``.NAME.HEX8.part.zarr``): no PID
_LEGACY_PART = re.compile(r"^\..+\.[a-z0-9_]{8}\.part(\.[A-Za-z0-9.]+)?$")
_cleaned: set[str] = set()
_cleaned_lock = threading.Lock()


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def part_folder_name(dest: str | os.PathLike) -> str:
    """The hidden working-folder name for a write to ``dest`` (recognised by :func:`remove_stale_parts`)."""
    name = Path(dest).name[:180]
    return f".{name}.nf-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.part"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would end the process there; rely on age only
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _changed_since(p: Path, cutoff: float) -> bool:
    """Whether ``p`` or anything under it (a zarr being written deep down) changed after ``cutoff``."""
    if p.lstat().st_mtime > cutoff:
        return True
    if not p.is_dir() or p.is_symlink():
        return False
    for root, dirs, files in os.walk(p):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                if os.lstat(os.path.join(root, name)).st_mtime > cutoff:
                    return True
    return False


def _is_stale(p: Path, now: float) -> bool:
    m = _PART.match(p.name)
    try:
        if m is not None and m["host"] == _host_tag():
            return not _pid_alive(int(m["pid"]))
        if m is not None or _LEGACY_PART.match(p.name):  # another host's, or an older version's
            return not _changed_since(p, now - STALE_SECONDS)
    except OSError:
        return False
    return False


def remove_stale_parts(folder: str | os.PathLike) -> list[Path]:
    """Remove leftovers of killed writes in ``folder`` (see the module text); returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    now = time.time()
    try:
        entries = [Path(e.path) for e in os.scandir(folder) if e.name.startswith(".") and ".part" in e.name]
    except OSError:
        return removed
    for p in entries:
        if not _is_stale(p, now):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass  # another process got there first, or no permission: leave it
    return removed


def _clean_once(folder: Path) -> None:
    """:func:`remove_stale_parts` on the first write of this process into ``folder``."""
    key = os.path.abspath(folder)
    with _cleaned_lock:
        if key in _cleaned:
            return
        _cleaned.add(key)
    remove_stale_parts(folder)


def _umask() -> int:
    try:  # Linux: read it without changing it (changing it races with other threads)
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(path: Path) -> None:
    mode = (0o777 if path.is_dir() else 0o666) & ~_umask()
    with contextlib.suppress(OSError):  # a filesystem without permissions (FAT, some mounts)
        os.chmod(path, mode)


def _named(err: OSError, dest: Path) -> OSError:
    """The same error, naming the user's ``dest`` instead of a temporary path."""
    reason = err.strerror or str(err)
    try:
        new = type(err)(err.errno, f"cannot write {dest}: {reason}") if err.errno else type(err)(f"cannot write {dest}: {reason}")
    except TypeError:  # an OSError subclass with its own constructor
        new = OSError(err.errno, f"cannot write {dest}: {reason}")
    return new


def _replace(tmp: Path, dest: Path, work: Path) -> None:
    """Move ``tmp`` onto ``dest``; a folder result (zarr) first moves an existing ``dest`` aside into ``work``."""
    if not (tmp.is_dir() and (dest.exists() or dest.is_symlink())):
        os.replace(tmp, dest)
        return
    aside = work / ".replaced"
    os.replace(dest, aside)
    try:
        os.replace(tmp, dest)
    except OSError:
        os.replace(aside, dest)  # put the old result back rather than lose it
        raise


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path for ``dest`` (a file or a folder such as a zarr); on success it
    replaces ``dest`` in one rename.

    The temporary has ``dest``'s name (or ``"part" + suffix``) so writers that pick a format from
    the name work; it lies in a private hidden folder beside ``dest`` that is removed afterwards.
    On any error ``dest`` is left as it was and an OSError names ``dest``.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _clean_once(dest.parent)
        work = dest.parent / part_folder_name(dest)
        work.mkdir(mode=0o700)
    except OSError as err:
        raise _named(err, dest) from err
    tmp_path = work / (dest.name if suffix is None else f"part{suffix}")
    try:
        try:
            yield tmp_path
            _replace(tmp_path, dest, work)
            _honour_umask(dest)
        except OSError as err:
            if str(work) in str(err) or err.filename in (str(tmp_path), str(work), str(dest)):
                raise _named(err, dest) from err
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_atomic(dest: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        write(tmp)
    return Path(dest)
