"""Outputs that appear whole or not at all, locks that keep two processes from writing one output,
and the sha256 that lets a later stage record exactly which file it read.

`replacing(path)` hands out a temp path beside `path` (same folder, so `os.replace` is atomic) and
moves it onto `path` only when the block succeeds: a reader, a crash or a kill never sees half a
file, and a failure removes the temp file and names `path` (a full disk's failed write() names no
file). `replacing_dir(path)` does the same for a whole folder. `exclusive(lock, what)` refuses,
rather than waits, when another process holds the lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Busy(ValueError):
    """Another process holds the lock of an output; the message names it and the lock file."""


def _fsync_dir(path: Path) -> None:
    """Make a rename in folder `path` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def named(err: BaseException, path: Path, tmp: Path | None = None) -> OSError | None:
    """An OSError naming `path` for a failed write whose error names no file (or only the temp
    file); None when `err` is not such an error. torch.save reports a failed write as a
    RuntimeError raised while handling the OSError: that OSError is taken."""
    wrapped = isinstance(err, RuntimeError) and not err.__suppress_context__
    cause = err if isinstance(err, OSError) else err.__context__ if wrapped else None
    if not isinstance(err, Exception) or not isinstance(cause, OSError):
        return None
    if cause.filename not in (None, str(tmp) if tmp else None):
        return None
    msg = f"cannot write {path}: {cause.strerror or cause}"
    return OSError(cause.errno, msg) if cause.errno else OSError(msg)


def _temp_beside(path: Path) -> Path:
    """A hidden name in the folder of `path`, unique to this process and call; suffix kept."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextmanager
def replacing(path: Path, *, tmp: Path | None = None, durable: bool = False) -> Iterator[Path]:
    """A temp path (suffix kept, for writers that look at it) that replaces `path` when the block
    succeeds. `tmp`: a fixed temp name, only for writers that hold a lock (a killed writer's temp
    file is then overwritten by the next one, not left behind); `durable`: fsync file and folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or _temp_beside(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if (better := named(err, path, tmp)) is not None:
            raise better from err
        raise
    if durable:
        _fsync_dir(path.parent)


@contextmanager
def replacing_dir(path: Path) -> Iterator[Path]:
    """A new temp folder beside `path` that replaces the folder `path` when the block succeeds; on a
    failure it is removed and `path` stays as it was. Two renames swap them: for an instant `path` is
    absent, never half written. Two writers of one folder must hold its lock (`lock_beside`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    tmp.mkdir()  # unlike mkdtemp, honours the umask
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if (better := named(err, path)) is not None:
            raise better from err
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_text(path: Path, text: str) -> None:
    """`path` holds `text`, or (on any failure) what it held before."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def lock_beside(path: Path) -> Path:
    """The lock file of an output folder: beside it, so that it is no part of the output."""
    return path.parent / f".{path.name}.lock"


@contextmanager
def exclusive(lock: Path, what: str) -> Iterator[None]:
    """Hold an exclusive flock on the file `lock` for the block, or raise Busy naming `what`.

    The lock file is removed at the end, while still held; a process that opened it just before
    then finds it gone (or replaced) once it gets the lock, and tries again. A killed holder
    releases the lock and leaves an empty file behind, which the next holder takes over.
    """
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(lock, "a") as fd:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(f"{what}: another process holds {lock}; wait for it to end") from None
            try:
                if os.stat(lock).st_ino != os.fstat(fd.fileno()).st_ino:
                    continue  # removed by the holder before us as it finished: lock the new file
            except FileNotFoundError:
                continue
            try:
                yield
            finally:
                lock.unlink(missing_ok=True)
            return
