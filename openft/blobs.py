"""Blob store for file bytes and results: a local folder by default, any fsspec URL (s3://bucket/prefix) otherwise.

A blob appears whole or not at all. Object stores publish an object only once it is complete; on a local disk the
bytes go to a temporary name beside the blob (``<key>.partial-<random>``), are fsync'd, and are renamed onto the
key, so a kill -9, a full disk or an I/O error mid-write never leaves a partial blob under its key. A write that
fails for want of storage (a full disk, a file size limit, an I/O error) raises ``StorageFull`` (a 507 in OpenAI's
envelope). The temporary file of a write that was killed is removed by ``sweep_partials``; a blob whose database
row was never written (the service killed between the two) is found by ``entries`` and removed by its owner's sweep
(``files.sweep_orphans``, ``uploads.sweep_leftovers``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from openft import jobdir
from openft.errors import StorageFull

PARTIAL = ".partial-"
# Errors of the storage itself, not of the request: a full disk or quota, a file size limit, a failing device.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


class Blobs:
    def __init__(self, url: str, options: dict | None = None):
        self.fs, self.root = fsspec.core.url_to_fs(url, **(options or {}))
        self.fs.makedirs(self.root, exist_ok=True)
        self.local = isinstance(self.fs, LocalFileSystem)

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    @contextlib.contextmanager
    def _new(self, key: str):
        """A binary file to write the blob ``key`` into; the blob exists once the block ends without an error."""
        path = self._path(key)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # keys may have folders (uploads/<id>/<part>)
        if not self.local:
            try:
                with self.fs.open(path, "wb") as out:
                    yield out
            except BaseException:
                self.delete(key)
                raise
            return
        tmp = f"{path}{PARTIAL}{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fault = storage_fault(exc)
            if fault is not None:
                raise fault from exc
            raise
        jobdir.fsync_dir(Path(path).parent)

    def put(self, key: str, data: bytes) -> None:
        with self._new(key) as out:
            out.write(data)

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        """Write a blob from byte chunks as they come, never holding it whole; returns its size. If the chunks
        raise (a size limit, a broken connection) or the write fails, no blob is left behind."""
        size = 0
        with self._new(key) as out:
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
        return size

    def read_chunks(self, key: str, size: int = 1 << 20) -> Iterator[bytes]:
        with self.fs.open(self._path(key), "rb") as f:
            while chunk := f.read(size):
                yield chunk

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))

    def delete(self, key: str) -> None:
        if self.fs.exists(self._path(key)):
            self.fs.rm_file(self._path(key))

    def delete_folder(self, key: str) -> None:
        """Remove a folder of blobs (an upload's parts) and everything under it."""
        if self.fs.exists(self._path(key)):
            self.fs.rm(self._path(key), recursive=True)

    def entries(self, folder: str = "") -> list[tuple[str, float | None]]:
        """(key, last-modified time, or None for a folder or a time the store does not give) of what lies directly
        under ``folder``."""
        base = self._path(folder) if folder else self.root
        if not self.fs.exists(base):
            return []
        found = []
        for entry in self.fs.ls(base, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if PARTIAL in name:
                continue
            key = f"{folder}/{name}" if folder else name
            found.append((key, None if entry["type"] == "directory" else _modified(entry)))
        return found

    def local_copy(self, key: str, dest: str) -> None:
        """Copy a blob to a local path (a training attempt reads its data from its job directory)."""
        self.fs.get_file(self._path(key), dest)

    def sweep_partials(self, older_than: float = 3600) -> int:
        """Remove the temporary files of local writes that were killed (older than ``older_than`` seconds, so a
        write still under way on another replica is left alone); returns how many."""
        if not self.local:
            return 0
        removed, cutoff = 0, time.time() - older_than
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    if PARTIAL in name and os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
        return removed


def _modified(entry: dict) -> float | None:
    """An fsspec listing entry's modification time (a local file's ``mtime``, an object's ``LastModified``)."""
    when = entry.get("mtime", entry.get("LastModified", entry.get("last_modified")))
    if when is None:
        return None  # unknown: never taken for old
    return when.timestamp() if hasattr(when, "timestamp") else float(when)


def storage_fault(exc: BaseException) -> StorageFull | None:
    """The ``StorageFull`` error for an exception caused (directly or along its chain) by the storage failing."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return StorageFull(f"The request's bytes could not be stored: {exc.strerror}. Nothing was kept; "
                               "try again later.")
        exc = exc.__cause__ or exc.__context__
    return None
