"""Atomic file writes: everything is written under a temporary name and renamed, so an interrupted
command never leaves a half-written file behind.

Kernel-safe (standard library only): `src.kernel` inlines this file (the submission is written with it).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield str(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries `atomic_write` left under `folder` when its process was killed (SIGKILL, power
    loss): those whose process id no longer runs. Returns the paths removed."""
    removed = []
    for tmp in Path(folder).rglob(".*.tmp"):
        match = re.fullmatch(r"\..+\.(\d+)\.tmp", tmp.name)
        if match and tmp.is_file() and not _running(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLockedError(RuntimeError):
    """Another live process is writing the run folder; the message names the folder and its pid."""


@contextmanager
def run_lock(folder: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold `<folder>/.lock` (created with the folder) while the block writes the folder, so two commands never
    write one run folder at once: a second one raises RunLockedError naming the holder's pid. A lock left by a
    process that no longer runs (killed) is cleared. `enabled=False` (a DDP rank other than 0): no lock."""
    if not enabled:
        yield
        return
    path = Path(folder) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):  # the second try follows the removal of a stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            holder = _lock_pid(path)
            if holder is not None and holder != os.getpid() and _running(holder):
                raise RunLockedError(f"{folder} is being written by process {holder} (lock {path}): wait for it to "
                                     "finish, or write to another run (exp=... / fold=...)") from None
            path.unlink(missing_ok=True)  # stale: its process is gone
    else:
        raise RunLockedError(f"{path}: could not take the lock (another process keeps creating it)")
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    try:
        yield
    finally:
        if _lock_pid(path) == os.getpid():
            path.unlink(missing_ok=True)


def _lock_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
