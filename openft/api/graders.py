"""Routes for fine_tuning/alpha/graders: validate a grader, or run one on a model sample (openft.graders)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from openft.api.deps import scope, services
from openft.graders import validate_grader, worker
from openft.protocol import Strict
from openft.services import Services

router = APIRouter(prefix="/fine_tuning/alpha/graders", tags=["graders"], dependencies=[Depends(scope)])


class RunGraderRequest(Strict):
    grader: dict[str, Any]
    model_sample: str
    item: Any = None


class ValidateGraderRequest(Strict):
    grader: dict[str, Any]


@router.post("/run")
def run_grader(req: RunGraderRequest, svc: Services = Depends(services)) -> dict:
    # a plain def: FastAPI runs it on a worker thread while the grading child process works
    return worker.run(svc.settings, req.grader, req.model_sample, req.item)


@router.post("/validate")
def validate(req: ValidateGraderRequest) -> dict:
    return {"grader": validate_grader(req.grader)}
