"""Routes for files: upload (multipart), list, retrieve, content, delete."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from openft import files
from openft import protocol as p
from openft.api.deps import scope, services
from openft.services import Services
from openft.errors import TooLarge
from openft.store import Scope

router = APIRouter(prefix="/files", tags=["files"])
CONTENT_TYPES = {t: {} for t in sorted({*files.MEDIA_TYPES.values(), files.DEFAULT_MEDIA_TYPE})}


@router.post("", response_model=p.FileObject)
async def upload_file(
    file: UploadFile, purpose: str = Form(...), who: Scope = Depends(scope), svc: Services = Depends(services),
    anchor: str | None = Form(None, alias="expires_after[anchor]"),
    seconds: str | None = Form(None, alias="expires_after[seconds]"),
):
    lifetime = files.lifetime(svc.settings, purpose, anchor, seconds)
    limit = svc.settings.max_file_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"File is larger than the limit of {limit} bytes.", param="file", code="file_too_large")
    # on a thread: writing up to OPENFT_MAX_FILE_BYTES to the blob store must not stall the event loop
    return files.to_wire(await run_in_threadpool(files.upload, svc, who, file.filename, purpose, data, lifetime))


@router.get("", response_model=p.IdPage[p.FileObject])
def list_files(
    after: str | None = None,
    limit: int = Query(10000, ge=1, le=10000),
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
    who: Scope = Depends(scope),
    svc: Services = Depends(services),
):
    rows, more = svc.store.list_files(who, after, limit, order, purpose)
    data = [files.to_wire(r) for r in rows]
    return p.IdPage[p.FileObject](
        data=data, has_more=more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )


@router.get("/{file_id}", response_model=p.FileObject)
def retrieve_file(file_id: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    return files.to_wire(files.get(svc, who, file_id))


@router.get("/{file_id}/content", response_class=Response, responses={200: {"content": CONTENT_TYPES}})
def file_content(file_id: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    row = files.get(svc, who, file_id)
    return Response(svc.blobs.get(row.blob_key), media_type=files.media_type(row.filename))


@router.delete("/{file_id}", response_model=p.Deleted)
def delete_file(file_id: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    return files.delete(svc, who, file_id)
