"""Atomic replacement of folders and files, shared by the model builders, the trainer, the sample
store and the exports.

A folder or file is written complete beside its destination, then renamed into place: a crash
leaves either the old one or the new one, never a mix (plus a dot-named leftover that listings skip).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_FILE_MODE = 0o644  # as a plain open() would leave it (mkstemp makes 0600 files)


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike, aside_prefix: str | None = None) -> None:
    """Move folder src to dst (same filesystem). An existing dst is first moved aside into a fresh
    dot-folder named `aside_prefix…` beside it (default `.<dst name>.old-`), restored if the swap
    fails, and deleted only after it succeeded."""
    src, dst = Path(src), Path(dst)
    if not dst.exists():
        os.replace(src, dst)
        return
    # mkdtemp: a unique name even when several processes or threads replace the same folder
    aside = Path(tempfile.mkdtemp(prefix=aside_prefix or f".{dst.name}.old-", dir=dst.parent))
    old = aside / dst.name
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside)


def replace_dir_copy(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copy folder `source` (dot-files skipped) next to `destination`, then swap it in atomically."""
    destination = Path(destination)
    staging = destination.with_name(f".{destination.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns(".*"))
    replace_dir(staging, destination)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """An open file under a temporary name beside `path` (mode "w" text, "wb" bytes); on a clean
    exit it is flushed to disk and renamed over `path`: a reader (or a kill at any moment) sees
    the old file or the new one, never a truncated one. The temporary file is removed on failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_file_atomic(path: Path, write: Callable[[IO[str]], None]) -> None:
    """Write a text file through `write(file)`, atomically (`atomic_file`)."""
    with atomic_file(path) as handle:
        write(handle)
