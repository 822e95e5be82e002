"""OpenAI's Uploads: a file of up to 8 GB sent as parts of up to 64 MB (in parallel, in any order), assembled in the
order that ``complete`` lists them into an ordinary File.

Parts stream into the blob store as they arrive and are streamed again, one after the other, into the File's blob
at completion; no part and no file is ever held whole in memory. Completion checks the byte count announced at
creation and, when given, the md5 of the assembled bytes. An Upload expires an hour after it is created (its parts
are then removed by the scheduler's sweep); a cancelled one keeps no parts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from openft import files
from openft import protocol as p
from openft import tables as t
from openft.errors import InvalidRequest, NotFound, TooLarge
from openft.ids import new_id, now
from openft.services import Services
from openft.store import Scope

MAX_UPLOAD_BYTES = 8 * 1024**3
MAX_PART_BYTES = 64 * 1024**2
LIFETIME = 3600


def create(svc: Services, who: Scope, req: p.CreateUploadRequest) -> t.Upload:
    files.check_name(req.filename, req.purpose, param="filename")
    if req.bytes > MAX_UPLOAD_BYTES:
        raise InvalidRequest(f"bytes is {req.bytes}; an Upload holds at most {MAX_UPLOAD_BYTES} bytes (8 GB).",
                             param="bytes")
    expiry = req.expires_after
    lifetime = files.lifetime(svc.settings, req.purpose, expiry.anchor if expiry else None,
                              str(expiry.seconds) if expiry else None)
    created = now()
    row = t.Upload(id=new_id("upload"), organization_id=who.org, user=who.user, created_at=created,
                   expires_at=created + LIFETIME, filename=req.filename, purpose=req.purpose, mime_type=req.mime_type,
                   bytes=req.bytes, file_lifetime=lifetime, status="pending")
    svc.store.add(row)
    return row


def get(svc: Services, who: Scope, upload_id: str) -> t.Upload:
    row = svc.store.get_upload(who, upload_id)
    if row is None:
        raise NotFound(f"No such Upload: {upload_id}", param="upload_id")
    return row


def _pending(svc: Services, who: Scope, upload_id: str) -> t.Upload:
    row = get(svc, who, upload_id)
    if row.status == "pending" and row.expires_at <= now():
        raise InvalidRequest(f"Upload {upload_id} has expired.", param="upload_id", code="upload_expired")
    if row.status != "pending":
        raise InvalidRequest(f"Upload {upload_id} is {row.status}; it no longer accepts this request.",
                             param="upload_id", code="invalid_upload_status")
    return row


def add_part(svc: Services, who: Scope, upload_id: str, chunks: Iterable[bytes]) -> t.UploadPart:
    _pending(svc, who, upload_id)
    part = t.UploadPart(id=new_id("part"), upload_id=upload_id, created_at=now(), bytes=0, blob_key="")
    part.blob_key = f"uploads/{upload_id}/{part.id}"
    part.bytes = svc.blobs.put_stream(part.blob_key, _limited(chunks, MAX_PART_BYTES))
    svc.store.add(part)
    return part


def _limited(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if seen > limit:
            raise TooLarge(f"A part may hold at most {limit} bytes (64 MB).", param="data", code="part_too_large")
        yield chunk


def complete(svc: Services, who: Scope, upload_id: str, req: p.CompleteUploadRequest) -> tuple[t.Upload, t.File]:
    upload = _pending(svc, who, upload_id)
    parts = {part.id: part for part in svc.store.upload_parts(upload_id)}
    for i, part_id in enumerate(req.part_ids):
        if part_id not in parts:
            raise InvalidRequest(f"part_ids[{i}] ({part_id}) is not a part of upload {upload_id}.",
                                 param=f"part_ids[{i}]")
    if len(set(req.part_ids)) != len(req.part_ids):
        raise InvalidRequest("part_ids lists a part more than once.", param="part_ids")
    total = sum(parts[i].bytes for i in req.part_ids)
    if total != upload.bytes:
        raise InvalidRequest(f"The parts hold {total} bytes, but the upload was created with bytes={upload.bytes}.",
                             param="bytes", code="upload_size_mismatch")
    file_id, md5 = new_id("file"), hashlib.md5()
    svc.blobs.put_stream(file_id, _hashed((c for i in req.part_ids for c in svc.blobs.read_chunks(parts[i].blob_key)),
                                          md5))
    if req.md5 is not None and req.md5.lower() != md5.hexdigest():
        svc.blobs.delete(file_id)
        raise InvalidRequest(f"md5 {req.md5} does not match the uploaded bytes ({md5.hexdigest()}).", param="md5",
                             code="upload_md5_mismatch")
    row = files.add_row(svc, who, file_id, upload.filename, upload.purpose, total, upload.file_lifetime)
    if not svc.store.set_upload_status(upload_id, "pending", "completed", file_id=file_id):
        svc.store.delete_file(file_id)  # a concurrent cancel or complete won
        svc.blobs.delete(file_id)
        raise InvalidRequest(f"Upload {upload_id} is no longer pending.", param="upload_id",
                             code="invalid_upload_status")
    _remove_parts(svc, upload_id)
    return get(svc, who, upload_id), row


def _hashed(chunks: Iterable[bytes], md5) -> Iterator[bytes]:
    for chunk in chunks:
        md5.update(chunk)
        yield chunk


def cancel(svc: Services, who: Scope, upload_id: str) -> t.Upload:
    _pending(svc, who, upload_id)
    if not svc.store.set_upload_status(upload_id, "pending", "cancelled"):
        raise InvalidRequest(f"Upload {upload_id} is no longer pending.", param="upload_id",
                             code="invalid_upload_status")
    _remove_parts(svc, upload_id)
    return get(svc, who, upload_id)


def sweep_expired(store, blobs) -> None:
    """Remove the parts of pending uploads past their hour (called by the scheduler's tick)."""
    for upload in store.expired_uploads():
        if store.set_upload_status(upload.id, "pending", "expired"):
            blobs.delete_folder(f"uploads/{upload.id}")


def sweep_leftovers(store, blobs) -> int:
    """Remove the part folders of uploads that are no longer pending (the service killed between an upload's end
    and the removal of its parts). Returns how many folders were removed."""
    folders = {key.rsplit("/", 1)[-1]: key for key, _ in blobs.entries("uploads")}
    statuses = store.upload_statuses(list(folders))
    done = [key for upload_id, key in folders.items() if statuses.get(upload_id, "pending") != "pending"]
    for key in done:
        blobs.delete_folder(key)
    return len(done)


def _remove_parts(svc: Services, upload_id: str) -> None:
    """All of an upload's part blobs, also one whose row was never written (a request cut off mid-part)."""
    svc.blobs.delete_folder(f"uploads/{upload_id}")


def to_wire(row: t.Upload, file: t.File | None = None) -> p.Upload:
    status = "expired" if row.status == "pending" and row.expires_at <= now() else row.status  # before the sweep
    return p.Upload(id=row.id, bytes=row.bytes, created_at=row.created_at, expires_at=row.expires_at,
                    filename=row.filename, purpose=row.purpose, status=status,
                    file=files.to_wire(file) if file is not None else None)
