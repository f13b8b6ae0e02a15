"""Atomic file/directory output: write to a temp sibling, then rename."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_output", "write_text_atomic", "write_json_atomic"]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success rename it onto ``path``.

    The temp name is ``.{stem}.tmp-{pid}-{random}{suffix}`` in the same
    directory (same filesystem, suffix kept so writers keyed on the extension
    work). Works for files and directories; an existing target (file or
    directory) is replaced. On exception the temp path is removed and the
    exception re-raised; the original target is left untouched. Parent
    directories are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = target.with_name(f".{target.stem}.tmp-{tag}{target.suffix}")
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    try:
        if target.exists() and (target.is_dir() or tmp.is_dir()) and not target.is_symlink():
            # os.replace cannot overwrite a directory: move the old one aside first.
            backup = target.with_name(f".{target.name}.old-{tag}")
            os.replace(target, backup)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(backup, target)
                raise
            _remove(backup)
        else:
            os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any, sort_keys: bool = True) -> None:
    """Atomically write ``obj`` as JSON (indent 2, sorted keys unless told not to, newline)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")
