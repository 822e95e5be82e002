"""Routes for models: the catalog's base models plus this organization's fine-tuned models and checkpoints."""

from __future__ import annotations

import shutil

from fastapi import APIRouter, Depends

from openft import protocol as p
from openft.api.deps import scope, services
from openft.errors import InvalidRequest, NotFound
from openft.services import Services
from openft.store import Scope

router = APIRouter(prefix="/models", tags=["models"])
BASE_CREATED = 1704067200  # catalog models carry no creation time of their own


def _not_found(name: str) -> NotFound:
    return NotFound(f"The model '{name}' does not exist or you do not have access to it.", code="model_not_found")


@router.get("", response_model=p.ModelList)
def list_models(who: Scope = Depends(scope), svc: Services = Depends(services)):
    data = [p.ModelObject(id=name, created=BASE_CREATED, owned_by="openft") for name in svc.settings.catalog()]
    data += [p.ModelObject(id=c.model_name, created=c.created_at, owned_by=who.org) for c in svc.store.org_models(who.org)]
    return p.ModelList(data=data)


@router.get("/{model:path}", response_model=p.ModelObject)
def retrieve_model(model: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    if model in svc.settings.catalog():
        return p.ModelObject(id=model, created=BASE_CREATED, owned_by="openft")
    row = svc.store.model_by_name(who.org, model)
    if row is None:
        raise _not_found(model)
    return p.ModelObject(id=row.model_name, created=row.created_at, owned_by=who.org)


@router.delete("/{model:path}", response_model=p.Deleted)
def delete_model(model: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    if model in svc.settings.catalog():
        raise InvalidRequest(f"The base model '{model}' cannot be deleted.", param="model", code="model_not_deletable")
    row = svc.store.model_by_name(who.org, model)
    if row is None:
        raise _not_found(model)
    svc.store.delete_checkpoints([row.id])
    shutil.rmtree(row.path, ignore_errors=True)
    return p.Deleted(id=model, object="model", deleted=True)
