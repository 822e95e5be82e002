"""Routes for webhook_endpoints (OpenAI's paths and shapes): an organization registers where its jobs' webhooks go.
The signing secret is shown once, in the answer to create."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from openft import protocol as p
from openft import webhooks
from openft.api.deps import scope, services
from openft.services import Services
from openft.store import Scope

router = APIRouter(prefix="/webhook_endpoints", tags=["webhooks"])


@router.post("")
def create_endpoint(req: p.CreateWebhookEndpointRequest, who: Scope = Depends(scope),
                    svc: Services = Depends(services)):
    endpoint = webhooks.create_endpoint(svc.store, who.org, req.url, req.name, req.event_types)
    return webhooks.to_wire(endpoint, with_secret=True)


@router.get("")
def list_endpoints(who: Scope = Depends(scope), svc: Services = Depends(services)):
    data = [webhooks.to_wire(e) for e in svc.store.list_webhook_endpoints(who.org)]
    return {"object": "list", "data": data, "has_more": False,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


@router.get("/{endpoint_id}")
def retrieve_endpoint(endpoint_id: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    return webhooks.to_wire(webhooks.get_endpoint(svc.store, who.org, endpoint_id))


@router.delete("/{endpoint_id}")
def delete_endpoint(endpoint_id: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    endpoint = webhooks.get_endpoint(svc.store, who.org, endpoint_id)
    svc.store.delete_webhook_endpoint(endpoint.id)
    return {"id": endpoint.id, "object": "webhook_endpoint.deleted", "deleted": True}
