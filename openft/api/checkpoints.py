"""Routes for fine_tuning/checkpoints/{model}/permissions: share a fine-tuned model with other organizations."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query

from openft import permissions
from openft import protocol as p
from openft.api.deps import scope, services
from openft.services import Services
from openft.store import Scope

router = APIRouter(prefix="/fine_tuning/checkpoints", tags=["fine-tuning"])


def _page(rows, more: bool) -> p.IdPage[p.Permission]:
    data = [permissions.to_wire(r) for r in rows]
    return p.IdPage[p.Permission](data=data, has_more=more, first_id=data[0].id if data else None,
                                  last_id=data[-1].id if data else None)


@router.post("/{model:path}/permissions", response_model=p.IdPage[p.Permission])
def create_permissions(model: str, req: p.CreatePermissionsRequest, who: Scope = Depends(scope),
                       svc: Services = Depends(services)):
    return _page(permissions.create(svc.store, who.org, model, req.project_ids), False)


@router.get("/{model:path}/permissions", response_model=p.IdPage[p.Permission])
def list_permissions(
    model: str,
    after: str | None = None,
    limit: int = Query(10, ge=1, le=100),
    order: Literal["ascending", "descending"] = "descending",
    project_id: str | None = None,
    who: Scope = Depends(scope),
    svc: Services = Depends(services),
):
    return _page(*permissions.list_page(svc.store, who.org, model, project_id, after, limit, order))


@router.delete("/{model:path}/permissions/{permission_id}", response_model=p.Deleted)
def delete_permission(model: str, permission_id: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    permissions.delete(svc.store, who.org, model, permission_id)
    return p.Deleted(id=permission_id, object="checkpoint.permission", deleted=True)
