"""Blob store for file bytes and results: a local folder by default, any fsspec URL (s3://bucket/prefix) otherwise."""

from __future__ import annotations

import fsspec


class Blobs:
    def __init__(self, url: str):
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def put(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), data)

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))

    def delete(self, key: str) -> None:
        if self.fs.exists(self._path(key)):
            self.fs.rm_file(self._path(key))

    def local_copy(self, key: str, dest: str) -> None:
        """Copy a blob to a local path (a training attempt reads its data from its job directory)."""
        self.fs.get_file(self._path(key), dest)
