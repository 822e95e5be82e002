"""Files: upload (bytes to the blob store, a row to the store), list, retrieve, content, delete, expiry.

A file with an ``expires_after`` policy (OpenAI's: anchor ``created_at``, 1 hour to 30 days; ``batch`` files
expire after 30 days by default) disappears from the API when it expires. Its bytes are removed by the scheduler's
sweep (``sweep_expired``), except while an unfinished job trains or validates on it: a job is never broken by the
expiry of a file it was created with.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

from openft import protocol as p
from openft import validation
from openft import tables as t
from openft.blobs import Blobs
from openft.services import Services
from openft.errors import InvalidRequest, NotFound
from openft.ids import new_id, now
from openft.store import Scope, Store

PURPOSES = {"assistants", "batch", "fine-tune", "vision", "user_data", "evals"}
MAX_LIFETIME = 30 * 24 * 3600
# Content types of a file's bytes by its name: ones that both SDKs accept (MKA1's refuses application/octet-stream
# for text files); anything else is served as bytes.
MEDIA_TYPES = {".jsonl": "application/jsonl", ".csv": "text/csv", ".json": "application/json", ".txt": "text/plain",
               ".md": "text/markdown", ".pdf": "application/pdf", ".png": "image/png", ".jpg": "image/jpeg",
               ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp"}
DEFAULT_MEDIA_TYPE = "application/octet-stream"


def lifetime(settings, purpose: str, anchor: str | None, seconds: str | None) -> int | None:
    """Seconds from creation to expiry that ``expires_after`` asks for (None: the file never expires)."""
    if anchor is None and seconds is None:
        return MAX_LIFETIME if purpose == "batch" else None
    if anchor != "created_at":
        raise InvalidRequest(f"expires_after.anchor must be 'created_at', got {anchor!r}.",
                             param="expires_after.anchor")
    lowest = settings.min_file_expiry_seconds
    if seconds is None or not seconds.strip().isdigit() or not lowest <= int(seconds) <= MAX_LIFETIME:
        raise InvalidRequest(f"expires_after.seconds must be an integer from {lowest} to {MAX_LIFETIME}, got "
                             f"{seconds!r}.", param="expires_after.seconds")
    return int(seconds)


def sweep_expired(store, blobs) -> None:
    """Remove the bytes of expired files that no unfinished job needs (called by the scheduler's tick)."""
    for row in store.expired_files():
        if not store.file_in_use(row.id):
            store.delete_file(row.id)
            blobs.delete(row.blob_key)


def sweep_orphans(store, blobs, older_than: float = 3600) -> int:
    """Remove file blobs that no live file row names: a service killed between storing an upload's bytes and
    writing its row, or between deleting a row and its bytes. Only blobs older than ``older_than`` seconds, so that
    another replica's upload still under way is left alone. Returns how many were removed."""
    cutoff = time.time() - older_than
    stale = [key for key, when in blobs.entries() if key.startswith("file_") and when is not None and when < cutoff]
    removed = 0
    for i in range(0, len(stale), 500):
        batch = stale[i:i + 500]
        for key in set(batch) - store.live_blob_keys(batch):
            blobs.delete(key)
            removed += 1
    return removed


def check_name(filename: str | None, purpose: str, param: str = "file") -> None:
    if purpose not in PURPOSES:
        raise InvalidRequest(f"Invalid purpose '{purpose}': expected one of {', '.join(sorted(PURPOSES))}.", param="purpose")
    if not filename or not filename.strip() or filename == "blob":
        raise InvalidRequest("The uploaded file needs a filename.", param=param)
    if purpose == "fine-tune" and not filename.endswith(".jsonl"):
        raise InvalidRequest(f"Fine-tuning files must be .jsonl files; got '{filename}'.", param=param)


def upload(svc: Services, who: Scope, filename: str | None, purpose: str, data: bytes,
           lifetime: int | None = None) -> t.File:
    check_name(filename, purpose)
    file_id = new_id("file")
    try:
        svc.blobs.put(file_id, data)
        return add_row(svc, who, file_id, filename, purpose, len(data), lifetime)
    except BaseException:  # a failed write or insert (or a cancelled request) must not leave bytes without a row
        svc.blobs.delete(file_id)
        raise


def add_row(svc: Services, who: Scope, file_id: str, filename: str, purpose: str, size: int,
            lifetime: int | None) -> t.File:
    """The row of a file whose bytes are already in the blob store under ``file_id``."""
    created = now()
    row = t.File(
        id=file_id, organization_id=who.org, user=who.user, bytes=size, created_at=created, filename=filename,
        purpose=purpose, status="processed", blob_key=file_id,
        expires_at=created + lifetime if lifetime is not None else None,
    )
    svc.store.add(row)
    return row


def get(svc: Services, who: Scope, file_id: str) -> t.File:
    row = svc.store.get_file(who, file_id)
    if row is None:
        raise NotFound(f"No such File object: {file_id}", param="id")
    return row


def delete(svc: Services, who: Scope, file_id: str) -> p.Deleted:
    row = get(svc, who, file_id)
    svc.store.delete_file(row.id)
    svc.blobs.delete(row.blob_key)
    return p.Deleted(id=row.id, object="file", deleted=True)


def media_type(filename: str) -> str:
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return MEDIA_TYPES.get(suffix, DEFAULT_MEDIA_TYPE)


def to_wire(row: t.File) -> p.FileObject:
    return p.FileObject(
        id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename, purpose=row.purpose,
        status=row.status, expires_at=row.expires_at,
    )


def validate(store: Store, blobs: Blobs, file_id: str, param: str, min_examples: int,
             method: str) -> tuple[validation.ValidationReport, str | None]:
    """The validation report of a stored training or validation file, and the blob key of its bytes (a file whose
    bytes are gone is an error of its own): what a job's validation and a dry run both go by. The bytes are read a
    chunk at a time, so memory does not grow with the file."""
    key = store.file_blob_key(file_id)
    chunks = _stored_chunks(blobs, key) if key else None
    if chunks is None:
        error = {"code": f"invalid_{param}", "param": param, "message": f"File {file_id} no longer exists."}
        return validation.ValidationReport(n_examples=0, format=None, error=error), None
    return validation.validate_training_file(chunks, param=param, min_examples=min_examples, method=method), key


def _stored_chunks(blobs: Blobs, key: str) -> Iterator[bytes] | None:
    """A blob's bytes a chunk at a time, or None when they are gone."""
    chunks = blobs.read_chunks(key)
    try:
        first = next(chunks, b"")
    except FileNotFoundError:
        return None
    return itertools.chain((first,), chunks)
