"""Atomic file output: everything the lab writes appears complete or not at all.

A file is written to a temporary name in its own folder (same file system), flushed and fsynced,
then renamed over the target with ``os.replace``; a folder is built beside its target and swapped
in with two renames. On any error the temporary file or folder is removed and the previous
target is left as it was. Every writer in the package goes through here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    The caller (or a library such as pyarrow) writes the whole file to the yielded path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the complete folder ``tmp`` to ``target``, replacing any previous one.

    Two renames on the same file system: the old folder is moved aside, the new one into
    place, then the old one deleted. A reader sees the old or the new complete folder (or,
    for the instant between the renames, none), never a mixture. If the second rename fails
    the old folder is put back."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def restore_interrupted(target: Path) -> bool:
    """Undo a :func:`replace_dir` that was killed between its two renames.

    Then ``target`` is missing and the previous folder sits beside it as
    ``.<name>.old-*``: move the newest such folder back. Returns whether one was restored.
    Call it before publishing again, so a kill at the worst instant loses nothing."""
    if target.exists():
        return False
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    olds = [p for p in olds if p.is_dir()]
    if not olds:
        return False
    os.replace(olds[-1], target)
    return True
