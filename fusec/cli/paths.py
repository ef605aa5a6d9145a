"""Output paths the command line will write, checked before any work so a typo costs nothing."""

from __future__ import annotations

import os
from pathlib import Path


def unwritable(path: Path) -> str | None:
    """Why `path` cannot be written as a file (None when it can); creates its missing folders."""
    if path.is_dir():
        return "it is a folder; give a file name"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create its folder {path.parent}: {exc.strerror or exc}"
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "permission denied"
    return None


def first_unwritable(outputs: dict[str, Path | None]) -> str | None:
    """`cannot write --json /proc/nope/x.json: ...` for the first output flag whose path cannot be written."""
    for flag, path in outputs.items():
        why = None if path is None else unwritable(path)
        if why:
            return f"cannot write {flag} {path}: {why}; choose a path you can write to"
    return None
