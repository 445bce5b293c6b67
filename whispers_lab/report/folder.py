"""The report folder: how its files are named, how a run stages its output, and its lock.

Every run that writes into a report folder (``whispers-lab report``, ``daily`` and ``demo``)
holds :class:`FolderLock`, an exclusive ``fcntl.flock`` on ``<out>/.daily.lock``, for the whole
run, so two runs never write the same folder (and so the same day) at once. The lock file holds
``<pid> <command>``; the kernel releases the lock when its holder dies, and a holder that exits
normally (or is stopped by SIGTERM / SIGINT) empties the file.

A run builds each day's folder in a hidden staging folder beside it,
``.day-NN.tmp-<pid>-<random>`` (``pid``: the process holding the lock), and publishes it with
renames (:func:`whispers_lab.atomic.replace_dir`). A run killed with SIGKILL cannot remove its
staging folder; the next run that takes the lock removes every staging folder that no live lock
holder owns (:func:`sweep_staging`): since it holds the lock itself, that is every staging
folder but its own.

This module is below :mod:`.runner` and :mod:`.index`: both import it, it imports neither.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from ..atomic import restore_interrupted
from ..errors import ReportError

LOCK_NAME = ".daily.lock"
_STAGING = re.compile(r"^\.(day-\d{2,})\.tmp-(?:(\d+)-)?")
_OLD = re.compile(r"^\.(day-\d{2,})\.old-")


def day_dir_name(day: int) -> str:
    return f"day-{day:02d}"


def utc_now() -> dt.datetime:
    """Now, naive UTC (the lab's convention)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def utc_stamp(when: dt.datetime | None = None) -> str:
    return (when or utc_now()).replace(microsecond=0).isoformat() + "Z"


def is_temp_name(name: str) -> bool:
    """Names of the runner's (and the export writer's) temporary files and folders."""
    return name.startswith(".") or ".tmp-" in name or ".old-" in name


def make_tmp_dir(out_dir: Path, day: int) -> Path:
    """A fresh staging folder ``.day-NN.tmp-<pid>-<random>`` in ``out_dir`` (mode 0755)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{day_dir_name(day)}.tmp-{os.getpid()}-", dir=out_dir))
    os.chmod(tmp, 0o755)
    return tmp


def staging_owner(name: str) -> int | None:
    """The pid in a staging folder's name (None: not a staging name, or an older name
    without a pid)."""
    m = _STAGING.match(name)
    return int(m.group(2)) if m and m.group(2) else None


def sweep_staging(out_dir: str | Path) -> list[str]:
    """Remove what killed runs left in ``out_dir``; return the names removed, sorted.

    Call it only while holding :class:`FolderLock`: then no other live run is writing here, so
    every staging folder ``.day-NN.tmp-*`` not owned by this process is stale. A day folder
    that a kill hid between the two renames of a publication (``.day-NN.old-*`` with no
    ``day-NN``) is put back first; other ``.day-NN.old-*`` folders and the atomic writers'
    hidden temporary files (``.index.html.*.tmp``) are removed too. ``.failed/`` (notebooks of
    failed runs, kept on purpose) and the lock file stay."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    for child in list(root.iterdir()):
        m = _OLD.match(child.name)
        if m and child.is_dir():
            restore_interrupted(root / m.group(1))
    removed = []
    me = os.getpid()
    for child in root.iterdir():
        name = child.name
        if _STAGING.match(name) and child.is_dir():
            if staging_owner(name) == me:
                continue
            shutil.rmtree(child, ignore_errors=True)
        elif _OLD.match(name) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        elif name.startswith(".") and name.endswith(".tmp") and child.is_file():
            child.unlink(missing_ok=True)
        else:
            continue
        removed.append(name)
    return sorted(removed)


class FolderLock:
    """Exclusive, non-blocking ``flock`` on ``<out_dir>/.daily.lock``, holding ``<pid> <command>``.

    Re-entrant within a process (``daily`` holds it and calls :func:`write_report`, which takes
    it too): only the outermost holder locks, sweeps and releases. Taking it fresh sweeps the
    folder (:func:`sweep_staging`). A second process gets :class:`ReportError` naming the
    holder: ``another daily run holds the lock (pid N)``."""

    _held: ClassVar[dict[str, tuple[int, int]]] = {}  # folder -> (fd, depth), this process

    def __init__(self, out_dir: str | Path, command: str = "daily") -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.command = command
        self.swept: list[str] = []
        self._key = ""

    @property
    def fd(self) -> int | None:
        held = self._held.get(self._key)
        return held[0] if held else None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = os.path.realpath(self.path)
        held = self._held.get(self._key)
        if held is not None:
            self._held[self._key] = (held[0], held[1] + 1)
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder, command = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"pid {holder}" if holder else "pid unknown"
                raise ReportError(f"another {command or 'report'} run holds the lock ({who}); "
                                  f"lock file {self.path}") from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.command}\n".encode())
            os.fsync(fd)
            self._held[self._key] = (fd, 1)
            self.swept = sweep_staging(self.path.parent)
        except BaseException:
            self._held.pop(self._key, None)
            _unlock(fd)
            raise
        return self

    def release(self) -> None:
        held = self._held.get(self._key)
        if held is None:
            return
        fd, depth = held
        if depth > 1:
            self._held[self._key] = (fd, depth - 1)
            return
        del self._held[self._key]
        _unlock(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _unlock(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> tuple[int | None, str | None]:
    """(pid, command) written by the lock's holder; ``None`` for what cannot be read."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        words = os.read(fd, 128).decode("ascii", "replace").split()
    except OSError:
        return None, None
    pid = int(words[0]) if words and words[0].isdigit() else None
    command = words[1] if len(words) > 1 and words[1].isidentifier() else None
    return pid, command
