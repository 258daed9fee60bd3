"""Write-then-rename: every file the tool writes appears whole or not at all.

A reader (another worker, a resumed run, a user's notebook) must never see half a file, and
a process killed mid-write must leave nothing that later passes for a result. Each helper
here writes to a unique temporary name in the target's own folder (a rename is atomic only
within one file system), optionally fsyncs it, and renames it over the target; on any error
the temporary file is removed and the target is untouched.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write", "temp_owner", "write_bytes", "write_json", "write_text"]

# Temporary names start with this prefix so that globbing readers ("*.parquet") skip them.
TMP_PREFIX = ".tmp-"


def _tmp_name(target: Path) -> Path:
    # pid + thread id: two writers of one target (threads or processes) never share a temp file;
    # the host lets a cleaner on a shared file system tell a dead local writer from a remote one.
    # The name never ends in the target's suffix, so "*.parquet" globs (polars, DuckDB) skip it.
    return target.with_name(f"{TMP_PREFIX}{target.name}.{os.getpid()}.{threading.get_ident()}@{socket.gethostname()}")


def temp_owner(path: str | Path) -> tuple[str, int] | None:
    """(host, pid) of the writer of a temporary file this module named, or None for other names."""
    name = Path(path).name
    if not name.startswith(TMP_PREFIX) or "@" not in name:
        return None
    stem, host = name[len(TMP_PREFIX):].rsplit("@", 1)
    parts = stem.rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdecimal():
        return None
    return host, int(parts[1])


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the folder entry is; not every platform can open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write to; on a clean exit it replaces ``target``.

    Args:
        target: the file to create or replace. Its folder must exist.
        durable: fsync the file and its folder, so the result survives a power cut, not
            only a killed process.

    Raises:
        Whatever the body raises; the temporary file is removed and ``target`` unchanged.
    """
    target = Path(target)
    tmp = _tmp_name(target)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        _fsync_dir(target.parent)


def atomic_write(target: str | Path, write: Callable[[Path], Any], *, durable: bool = False) -> Path:
    """Call ``write(tmp_path)`` and move the result over ``target`` atomically; returns ``target``."""
    with atomic_path(target, durable=durable) as tmp:
        write(tmp)
    return Path(target)


def write_bytes(target: str | Path, data: bytes, *, durable: bool = False) -> Path:
    return atomic_write(target, lambda tmp: tmp.write_bytes(data), durable=durable)


def write_text(target: str | Path, text: str, *, durable: bool = False) -> Path:
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=durable)


def write_json(target: str | Path, obj: Any, *, durable: bool = False, **dumps: Any) -> Path:
    """JSON with sorted keys and a trailing newline unless ``dumps`` says otherwise."""
    dumps = {"indent": 2, "sort_keys": True, **dumps}
    return write_text(target, json.dumps(obj, **dumps) + "\n", durable=durable)
