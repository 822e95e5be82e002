"""Durable checkpoints: the one owner of where a checkpoint's weights live once training has written them.

A training attempt writes checkpoints to its job folder, which is scratch: a worker's local disk may be lost with
its node. Before the attempt announces a checkpoint, ``publish`` copies its folder to the blob store under
``jobs/<job_id>/checkpoints/<name>/`` (the default store is ``<data_dir>/blobs``, where a copy is a hard link;
``OPENFT_BLOB_URL=s3://bucket/prefix`` puts it in object storage) and then writes ``manifest.json`` (every file's
name and size) last. A checkpoint exists only once its manifest does: an upload cut short leaves files without a
manifest, which nothing lists, resumes from or samples, and which the next ``publish`` of that name overwrites.

A checkpoint's *location* is the string the service stores for it (a checkpoint row's ``path``, a job's
``resume_from``, a lineage's adapters): an absolute folder in a local store, ``s3://bucket/prefix/jobs/…``
otherwise. ``materialize`` turns a location into a local folder: the store's own folder when the store is local,
the job's scratch copy when it still matches the manifest, else a download verified against the manifest into a
cache bounded in bytes (``<data_dir>/cache``, least recently used entries evicted first). Anything that is not a
location of the store (a catalog model's folder, a checkpoint row written before checkpoints were published) is a
local folder already and is returned as it is.

Needs only the standard library and fsspec: the trainer and the service both import it (the service fetches what
sampling and export read, then hands those processes local folders).
Secrets (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``) come from the environment, never from ``Config``, which
travels in ``spec.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import fsspec

MANIFEST = "manifest.json"


class Incomplete(Exception):
    """The location holds no complete checkpoint (no manifest, or files that do not match it)."""


class Unavailable(Exception):
    """A checkpoint could not be published (the store is unreachable, refuses, or its disk is full)."""


@dataclass(frozen=True)
class Config:
    """Where checkpoints go and where downloads are cached; what ``spec.json`` carries as ``checkpoint_store``."""

    url: str  # the blob store's root: an absolute folder or an fsspec URL (s3://bucket/prefix)
    cache_dir: str
    cache_bytes: int
    options: dict = field(default_factory=dict)  # fsspec storage options (endpoint_url, client_kwargs, …)

    @classmethod
    def from_json(cls, data: dict) -> "Config":
        return cls(data["url"], data["cache_dir"], data["cache_bytes"], dict(data.get("options") or {}))


def open_store(config: dict) -> "Store":
    """The store of ``config`` (``Settings.checkpoint_store()`` or spec.json's ``checkpoint_store``), one per
    process and configuration."""
    return _open(json.dumps(config, sort_keys=True))


def job_key(job_id: str, relative: str) -> str:
    """Where a job's folder ``relative`` (``checkpoints/checkpoint-3``) is published."""
    return f"jobs/{job_id}/{relative}"


def attempt_folder(spec: dict, where: str, job_dir: Path | None = None) -> Path:
    """A local folder for ``where``, a folder named in spec.json (``resume_from``, a parent adapter, the base): a
    location of the attempt's store is materialized (from the job's scratch in ``job_dir`` when that still holds
    it), anything else is a path (relative ones to ``job_dir``). Raises Incomplete for a location with no whole
    checkpoint."""
    store = open_store(spec["checkpoint_store"]) if spec.get("checkpoint_store") else None
    if store is None or not store.owns(where):
        return job_dir / where if job_dir else Path(where)
    own = store.location(job_key(spec["job_id"], ""))
    scratch = job_dir / where[len(own):] if job_dir and where.startswith(own) else None
    return store.materialize(where, scratch=scratch)


@lru_cache(maxsize=8)
def _open(config_json: str) -> "Store":
    return Store(Config.from_json(json.loads(config_json)))


class Store:
    def __init__(self, config: Config):
        self.config = config
        self.fs, root = fsspec.core.url_to_fs(config.url, **config.options)
        self.root = root.rstrip("/")
        self.fs.makedirs(self.root, exist_ok=True)  # an S3 bucket that does not exist yet is made
        self.local = "file" in _protocols(self.fs)
        self.cache = Path(config.cache_dir)
        self._manifests: dict[str, dict] = {}  # a published manifest never changes but by a re-publish of one name

    # ---- locations -------------------------------------------------------------------------------------------

    def location(self, key: str) -> str:
        path = f"{self.root}/{key}"
        return path if self.local else self.fs.unstrip_protocol(path)

    def owns(self, location: str) -> bool:
        """Whether ``location`` names a checkpoint in this store (not a catalog folder, nor a legacy scratch path)."""
        if self.local:
            return "://" not in location and location.startswith(self.root + "/")
        return location.startswith(self.fs.unstrip_protocol(self.root) + "/")

    def _path(self, location: str) -> str:
        return location if self.local else self.fs._strip_protocol(location)

    # ---- writing ---------------------------------------------------------------------------------------------

    def publish(self, folder: Path, key: str) -> str:
        """Copy ``folder`` to ``key`` file by file, then its manifest; returns the checkpoint's location. A stale
        manifest of the same name goes first, so no moment shows it beside files it does not describe."""
        dest = f"{self.root}/{key}"
        try:
            self._remove_file(f"{dest}/{MANIFEST}")
            files = {}
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                rel = path.relative_to(folder).as_posix()
                files[rel] = path.stat().st_size
                self._put(path, f"{dest}/{rel}")
            manifest = json.dumps({"files": files, "bytes": sum(files.values())}).encode()
            if self.local:
                _write_atomic(Path(dest) / MANIFEST, manifest)
            else:
                self.fs.pipe_file(f"{dest}/{MANIFEST}", manifest)
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the checkpoint does not exist
            raise Unavailable(f"Could not publish {key} to {self.config.url}: {type(exc).__name__}: {exc}") from exc
        location = self.location(key)
        self._manifests.pop(location, None)
        return location

    def _put(self, source: Path, dest: str) -> None:
        if not self.local:
            self.fs.put_file(str(source), dest)
            return
        target = Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)  # a file of an earlier, unfinished publish
        try:
            os.link(source, target)  # checkpoint files are written once: the link is the copy, at no cost
        except OSError:  # another filesystem
            shutil.copyfile(source, target)
            with open(target, "rb") as f:
                os.fsync(f.fileno())

    def remove(self, location: str, jobs_dir: Path) -> None:
        """Delete a checkpoint: its manifest first (it stops existing at once), then its files, its cached copy and
        the scratch copy in its job's folder under ``jobs_dir`` (on this host)."""
        if not self.owns(location):
            shutil.rmtree(location, ignore_errors=True)
            return
        path = self._path(location)
        self._remove_file(f"{path}/{MANIFEST}")
        self._manifests.pop(location, None)
        self.remove_tree(path)
        shutil.rmtree(self._cache_entry(location), ignore_errors=True)
        key = path[len(self.root) + 1:]  # jobs/<job_id>/checkpoints/<name>
        if key.startswith("jobs/"):
            shutil.rmtree(jobs_dir / key[len("jobs/"):], ignore_errors=True)

    def remove_prefix(self, key: str) -> None:
        """Delete everything under ``key`` (a cancelled job's checkpoints)."""
        self.remove_tree(f"{self.root}/{key}")

    def remove_tree(self, path: str) -> None:
        if self.local:
            shutil.rmtree(path, ignore_errors=True)
            return
        self.fs.invalidate_cache(path)
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def _remove_file(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    # ---- reading ---------------------------------------------------------------------------------------------

    def manifest(self, location: str) -> dict:
        """The manifest of the checkpoint at ``location``; Incomplete when there is none (not, or not yet, whole)."""
        if location not in self._manifests:
            try:
                data = self.fs.cat_file(f"{self._path(location)}/{MANIFEST}")
                self._manifests[location] = json.loads(data)
            except (FileNotFoundError, ValueError):
                raise Incomplete(f"no complete checkpoint at {location}") from None
        return self._manifests[location]

    def files(self, location: str) -> set[str]:
        """The names of the files in the checkpoint at ``location`` (empty when it is not complete or not there)."""
        if not self.owns(location):
            folder = Path(location)
            return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        try:
            return set(self.manifest(location)["files"])
        except Incomplete:
            return set()

    def materialize(self, location: str, scratch: Path | None = None) -> Path:
        """A local folder holding the checkpoint at ``location`` (see the module docstring); ``scratch`` is where the
        job's own copy would be. Raises Incomplete when the store has no complete checkpoint there."""
        if not self.owns(location):
            return Path(location)
        manifest = self.manifest(location)
        if self.local:
            return Path(location)
        if scratch is not None and _matches(scratch, manifest):
            return scratch
        entry = self._cache_entry(location)
        if _matches(entry, manifest):
            os.utime(entry)  # recently used
            return entry
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.cache))
        try:
            for rel in manifest["files"]:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{self._path(location)}/{rel}", str(tmp / rel))
            if not _matches(tmp, manifest):
                raise Incomplete(f"the checkpoint at {location} does not match its manifest")
            (tmp / MANIFEST).write_text(json.dumps(manifest))
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._evict(keep=entry)
        return entry

    # ---- the cache -------------------------------------------------------------------------------------------

    def _cache_entry(self, location: str) -> Path:
        return self.cache / hashlib.sha256(location.encode()).hexdigest()[:24]

    def _evict(self, keep: Path) -> None:
        """Drop least recently used entries until the cache fits in ``cache_bytes`` (the one just used stays)."""
        entries = []
        for entry in self.cache.iterdir():
            try:
                size = json.loads((entry / MANIFEST).read_text())["bytes"]
                entries.append((entry.stat().st_mtime, size, entry))
            except (OSError, ValueError, KeyError):  # a download in progress, or a folder that is not an entry
                continue
        total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries):
            if total <= self.config.cache_bytes:
                break
            if entry != keep:
                shutil.rmtree(entry, ignore_errors=True)
                total -= size


def _protocols(fs) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _matches(folder: Path, manifest: dict) -> bool:
    """Whether ``folder`` holds every file of ``manifest`` at its size."""
    try:
        return all((folder / rel).stat().st_size == size for rel, size in manifest["files"].items())
    except OSError:
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
