"""Blob store for file bytes and results: a local folder by default, any fsspec URL (s3://bucket/prefix) otherwise."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import fsspec


class Blobs:
    def __init__(self, url: str, options: dict | None = None):
        self.fs, self.root = fsspec.core.url_to_fs(url, **(options or {}))
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def put(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), data)

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        """Write a blob from byte chunks as they come, never holding it whole; returns its size. If the chunks
        raise (a size limit, a broken connection), no partial blob is left behind."""
        size, path = 0, self._path(key)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # keys may have folders (uploads/<id>/<part>)
        try:
            with self.fs.open(path, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
        except BaseException:
            self.delete(key)
            raise
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

    def local_copy(self, key: str, dest: str) -> None:
        """Copy a blob to a local path (a training attempt reads its data from its job directory)."""
        self.fs.get_file(self._path(key), dest)
