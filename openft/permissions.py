"""Sharing fine-tuned models and checkpoints (OpenAI's checkpoint permissions).

OpenAI shares a checkpoint with *projects*; openft has organizations, so a ``project_id`` names the grantee
organization (the ``--org`` of its keys). A grantee may sample the shared model (``models.resolve``) and see it in
its model list; only the owner lists, adds and deletes permissions, and to anyone else the model does not exist.
"""

from __future__ import annotations

import re

from openft import models
from openft import protocol as p
from openft import tables as t
from openft.errors import InvalidRequest, NotFound
from openft.ids import new_id, now
from openft.store import Store

PROJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _own_model(store: Store, org: str, model: str) -> t.Checkpoint:
    row = store.model_by_name(org, model)
    if row is None:
        raise models.not_found(model)
    return row


def create(store: Store, org: str, model: str, project_ids: list[str]) -> list[t.Permission]:
    _own_model(store, org, model)
    for i, project in enumerate(project_ids):
        if not PROJECT_ID.fullmatch(project):
            raise InvalidRequest(f"project_ids[{i}] must be 1 to 64 letters, digits, '_' or '-'.",
                                 param=f"project_ids[{i}]")
    existing = {row.project_id for row in _all(store, org, model)}
    rows, created = [], now()
    for project in dict.fromkeys(project_ids):  # once each, in the order given
        if project not in existing:
            rows.append(t.Permission(id=new_id("cp"), organization_id=org, model_name=model, project_id=project,
                                     created_at=created))
    store.add_permissions(rows)
    return rows


def _all(store: Store, org: str, model: str) -> list[t.Permission]:
    rows, after = [], None
    while True:
        page, more = store.list_permissions(org, model, None, after, 100, newest_first=False)
        rows += page
        if not more:
            return rows
        after = page[-1].id


def list_page(store: Store, org: str, model: str, project_id, after, limit, order) -> tuple[list, bool]:
    _own_model(store, org, model)
    return store.list_permissions(org, model, project_id, after, limit, newest_first=order == "descending")


def delete(store: Store, org: str, model: str, permission_id: str) -> None:
    _own_model(store, org, model)
    if not store.delete_permission(org, model, permission_id):
        raise NotFound(f"No permission {permission_id} on model {model}.", param="permission_id",
                       code="permission_not_found")


def to_wire(row: t.Permission) -> p.Permission:
    return p.Permission(id=row.id, created_at=row.created_at, project_id=row.project_id)


