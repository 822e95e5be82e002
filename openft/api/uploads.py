"""Routes for OpenAI's Uploads: create, add a part (multipart ``data``), complete, cancel (see openft.uploads)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Depends, UploadFile

from openft import protocol as p
from openft import uploads
from openft.api.deps import scope, services
from openft.services import Services
from openft.store import Scope

router = APIRouter(prefix="/uploads", tags=["uploads"])
CHUNK = 1 << 20


@router.post("", response_model=p.Upload)
def create_upload(req: p.CreateUploadRequest, who: Scope = Depends(scope), svc: Services = Depends(services)):
    return uploads.to_wire(uploads.create(svc, who, req))


@router.post("/{upload_id}/parts", response_model=p.UploadPart)
def add_upload_part(upload_id: str, data: UploadFile, who: Scope = Depends(scope),
                    svc: Services = Depends(services)):
    part = uploads.add_part(svc, who, upload_id, _chunks(data))
    return p.UploadPart(id=part.id, created_at=part.created_at, upload_id=upload_id)


def _chunks(data: UploadFile) -> Iterator[bytes]:
    """The part's bytes a megabyte at a time (the framework has spooled the request body to a temporary file)."""
    while chunk := data.file.read(CHUNK):
        yield chunk


@router.post("/{upload_id}/complete", response_model=p.Upload)
def complete_upload(upload_id: str, req: p.CompleteUploadRequest, who: Scope = Depends(scope),
                    svc: Services = Depends(services)):
    return uploads.to_wire(*uploads.complete(svc, who, upload_id, req))


@router.post("/{upload_id}/cancel", response_model=p.Upload)
def cancel_upload(upload_id: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    return uploads.to_wire(uploads.cancel(svc, who, upload_id))
