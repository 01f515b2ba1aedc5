"""`src.infer.io.run_lock`: one writer per run folder, even when several commands start at the same moment."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONTENDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from src.infer.io import RunLockedError, run_lock

    folder, marker, rounds = Path(sys.argv[1]), Path(sys.argv[1]) / "writer", int(sys.argv[2])
    while not (folder.parent / "go").exists():  # every contender starts together
        time.sleep(0.001)
    held = 0
    while held < rounds:
        try:
            with run_lock(folder):
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holder is inside
                os.close(fd)
                time.sleep(0.0005)
                marker.unlink()
                held += 1
        except RunLockedError:
            pass
        except FileExistsError:
            sys.exit(f"two holders at once (pid {os.getpid()})")
""")


def test_contending_commands_never_hold_one_run_folder_together(tmp_path):
    folder = tmp_path / "runs" / "dup8" / "fold0"
    contenders = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(folder), "250"], cwd=REPO,
                                   stderr=subprocess.PIPE, text=True) for _ in range(4)]
    (tmp_path / "runs" / "dup8").mkdir(parents=True, exist_ok=True)
    (tmp_path / "runs" / "dup8" / "go").touch()
    errors = [p.communicate(timeout=120)[1] for p in contenders]
    assert [p.returncode for p in contenders] == [0] * 4, errors
    assert not (folder / ".lock").exists()
