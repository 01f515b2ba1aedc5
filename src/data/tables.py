"""Reading the parquet tables the stages write (oof, pseudo-labels, indexes), with errors that name the file.

polars' own error for a truncated or corrupt parquet file does not say which file it was reading.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl


class TableError(ValueError):
    """A table file that cannot be read; the message names it and the command that writes it again."""


def read_parquet(path: str | Path, written_by: str, **kwargs) -> pl.DataFrame:
    """`pl.read_parquet(path, **kwargs)`; a missing, truncated or corrupt file raises TableError naming `path` and
    `written_by` (the command that writes it: the fix)."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path} not found: write it with {written_by}")
    try:
        return pl.read_parquet(path, **kwargs)
    except Exception as exc:
        raise TableError(f"{path}: not a readable parquet file ({type(exc).__name__}: {str(exc)[:200]}): the file is "
                         f"truncated or corrupt; write it again with {written_by}") from exc
