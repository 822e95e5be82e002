"""Routes for fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from openft import dryrun, jobs
from openft import protocol as p
from openft.api import sse
from openft.api.deps import scope, services
from openft.services import Services
from openft.store import Scope

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"])


@router.post("", response_model=p.FineTuningJob | p.DryRun)
def create_job(req: p.CreateJobRequest, who: Scope = Depends(scope), svc: Services = Depends(services)):
    if req.dry_run:  # the plan only: nothing is created
        return dryrun.plan(svc.store, svc.blobs, svc.settings, who, req)
    return jobs.to_wire(jobs.create(svc.store, svc.settings, who, req))


@router.get("", response_model=p.Page[p.FineTuningJob])
def list_jobs(
    request: Request,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=10000),
    who: Scope = Depends(scope),
    svc: Services = Depends(services),
):
    # metadata[k]=v pairs (deepObject), or the literal metadata=null for jobs without metadata.
    query = request.query_params
    metadata = {k[9:-1]: v for k, v in query.multi_items() if k.startswith("metadata[") and k.endswith("]")}
    rows, more = svc.store.list_jobs(who, after, limit, metadata, query.get("metadata") == "null")
    return p.Page[p.FineTuningJob](data=[jobs.to_wire(j) for j in rows], has_more=more)


@router.get("/{job_id}", response_model=p.FineTuningJob)
def retrieve_job(job_id: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    return jobs.to_wire(jobs.get(svc.store, who, job_id))


@router.post("/{job_id}/cancel", response_model=p.FineTuningJob)
def cancel_job(job_id: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    return jobs.to_wire(jobs.act(svc.store, who, job_id, "cancel"))


@router.post("/{job_id}/pause", response_model=p.FineTuningJob)
def pause_job(job_id: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    return jobs.to_wire(jobs.act(svc.store, who, job_id, "pause"))


@router.post("/{job_id}/resume", response_model=p.FineTuningJob)
def resume_job(job_id: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    return jobs.to_wire(jobs.act(svc.store, who, job_id, "resume"))


@router.get("/{job_id}/events", response_model=p.Page[p.JobEvent],
            responses={200: {"content": {"text/event-stream": {}}}})  # the live stream (stream=true)
def list_events(
    request: Request,
    job_id: str,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=10000),
    stream: bool = False,
    who: Scope = Depends(scope),
    svc: Services = Depends(services),
):
    jobs.get(svc.store, who, job_id)
    if stream or "text/event-stream" in request.headers.get("accept", ""):
        # Live events, oldest first, strictly after `after` or the Last-Event-ID a reconnecting client sends.
        cursor = after or request.headers.get("last-event-id")
        events = sse.job_events(svc.store, job_id, cursor, svc.settings.events_poll_interval)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    rows, more = svc.store.list_events(job_id, after, limit)
    return p.Page[p.JobEvent](data=[jobs.event_to_wire(e) for e in rows], has_more=more)


@router.get("/{job_id}/checkpoints", response_model=p.IdPage[p.JobCheckpoint])
def list_checkpoints(
    job_id: str,
    after: str | None = None,
    limit: int = Query(10, ge=1, le=10000),
    who: Scope = Depends(scope),
    svc: Services = Depends(services),
):
    jobs.get(svc.store, who, job_id)
    rows, more = svc.store.list_checkpoints(job_id, after, limit)
    data = [jobs.checkpoint_to_wire(c) for c in rows]
    return p.IdPage[p.JobCheckpoint](
        data=data, has_more=more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )
