"""Atomic file writes: everything is written under a temporary name and renamed, so an interrupted
command never leaves a half-written file behind.

Kernel-safe (standard library only): `src.kernel` inlines this file (the submission is written with it).
"""
from __future__ import annotations

import fcntl
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
    write one run folder at once: a second one raises RunLockedError naming the holder's pid. The lock is an
    flock on that file, so the kernel releases it when its process dies: a file left by a killed process is simply
    taken. `enabled=False` (a DDP rank other than 0): no lock."""
    if not enabled:
        yield
        return
    path = Path(folder) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _take_lock(path)
    if fd is None:
        holder = _lock_pid(path)
        who = f"process {holder}" if holder is not None else "another process"
        raise RunLockedError(f"{folder} is being written by {who} (lock {path}): wait for it to finish, or write to "
                             "another run (exp=... / fold=...)")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # still held: a process waiting on this file sees it gone and takes a new one
        os.close(fd)


def _take_lock(path: Path) -> int | None:
    """An open descriptor of `path` holding its exclusive flock, or None when another process holds it."""
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder unlinked that file between our open and flock: lock the one now at `path`


def _lock_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
