"""Routes for fine_tuning/alpha/graders: validate a grader, or run one on a model sample (openft.graders)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from openft.api.deps import scope, services
from openft.graders import validate_grader, worker
from openft.protocol import Strict
from openft.services import Services
from openft.store import Scope

router = APIRouter(prefix="/fine_tuning/alpha/graders", tags=["graders"], dependencies=[Depends(scope)])


class RunGraderRequest(Strict):
    grader: dict[str, Any]
    model_sample: str
    item: Any = None


class ValidateGraderRequest(Strict):
    grader: dict[str, Any]


@router.post("/run")
async def run_grader(req: RunGraderRequest, request: Request, who: Scope = Depends(scope),
                     svc: Services = Depends(services)) -> dict:
    # async: the grading child is awaited on the event loop, holding no request thread while it works or waits
    return await worker.run(svc.settings, request.app.state.grader_slots, who.org, req.grader, req.model_sample,
                            req.item)


@router.post("/validate")
def validate(req: ValidateGraderRequest) -> dict:
    return {"grader": validate_grader(req.grader)}
