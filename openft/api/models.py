"""Routes for models: the catalog's base models plus this organization's fine-tuned models and checkpoints."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from openft import models
from openft import protocol as p
from openft.api.deps import scope, services
from openft.services import Services
from openft.store import Scope

router = APIRouter(prefix="/models", tags=["models"])


def _wire(ref: models.ModelRef) -> p.ModelObject:
    return p.ModelObject(id=ref.name, created=ref.created, owned_by=ref.owned_by)


@router.get("", response_model=p.ModelList)
def list_models(who: Scope = Depends(scope), svc: Services = Depends(services)):
    return p.ModelList(data=[_wire(ref) for ref in models.list_models(svc.store, svc.settings, who.org)])


@router.get("/{model:path}/export", response_class=FileResponse)
def export_model(model: str, format: str = "merged", who: Scope = Depends(scope), svc: Services = Depends(services)):
    """The fine-tuned model as a .tar.gz: its LoRA adapter (format=adapter) or a merged Hugging Face folder."""
    ref = models.resolve(svc.store, svc.settings, who.org, model)
    models.check_exportable(ref, who.org)
    path = models.export_archive(svc.settings, ref, format)
    filename = re.sub(r"[^A-Za-z0-9._-]", "_", model).strip(".") + f"-{format}.tar.gz"  # a plain file name
    return FileResponse(path, media_type="application/gzip", filename=filename)


@router.get("/{model:path}", response_model=p.ModelObject)
def retrieve_model(model: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    return _wire(models.resolve(svc.store, svc.settings, who.org, model))


@router.delete("/{model:path}", response_model=p.Deleted)
def delete_model(model: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    models.delete(svc.store, svc.settings, who.org, model)
    return p.Deleted(id=model, object="model", deleted=True)
