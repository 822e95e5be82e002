"""Grading for the API: the grader is checked in the API process (pure Python), then graded in a child process,
``python -m openft.graders``, so that the API never imports torch (the cosine metric) or the scoring libraries,
and a grader that crashes or hangs takes down only that child.

The route awaits the child on the event loop: a waiting or running grader holds no request thread, so graders
cannot starve other routes. ``GraderSlots`` bounds them: at most ``OPENFT_GRADER_CONCURRENCY`` run at once, at most
``OPENFT_GRADER_CONCURRENCY_PER_ORG`` of one organization, and at most ``OPENFT_GRADER_QUEUE_PER_ORG`` more of that
organization wait; beyond that a call is a 429 with Retry-After. A child that does not answer within
``TIMEOUT_SECONDS`` is killed (its python-grader sandbox dies with it) and the run scores 0 with
unresponsive_reward_error.

Model graders sample as the organization that runs them (``endpoint_for``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import defaultdict
from contextlib import asynccontextmanager

from openft import auth
from openft.config import Settings
from openft.errors import APIError, InvalidRequest, RateLimited
from openft.graders.outcome import Outcome, response
from openft.graders.templates import make_sample
from openft.graders.validate import validate_grader

TIMEOUT_SECONDS = 300.0
RETRY_AFTER_SECONDS = 2


class GraderFailed(APIError):
    status = 500
    type = "server_error"


class GraderSlots:
    """Admission for graders/run: a bounded number running, per organization and in all, and a bounded queue."""

    def __init__(self, total: int, per_org: int, queue_per_org: int):
        self.total, self.per_org, self.admit_per_org = asyncio.Semaphore(total), per_org, per_org + queue_per_org
        self.admitted: dict[str, int] = defaultdict(int)
        self.org_slots: dict[str, asyncio.Semaphore] = {}

    @asynccontextmanager
    async def hold(self, org: str):
        if self.admitted[org] >= self.admit_per_org:
            raise RateLimited(f"Too many graders running or waiting for this organization (at most "
                              f"{self.admit_per_org}); retry later.", retry_after=RETRY_AFTER_SECONDS)
        self.admitted[org] += 1
        mine = self.org_slots.setdefault(org, asyncio.Semaphore(self.per_org))
        try:
            async with mine, self.total:
                yield
        finally:
            self.admitted[org] -= 1
            if not self.admitted[org]:
                del self.admitted[org], self.org_slots[org]


def endpoint_for(settings: Settings, org: str, job_id: str | None = None) -> dict:
    """Where and as whom model graders sample: an external endpoint with its configured key, or this service as
    ``org`` (a short-lived internal token; for a job, one that ends with the job)."""
    if settings.grader_model_base_url:
        return {"base_url": settings.grader_model_base_url, "api_key": settings.grader_model_api_key}
    return {"base_url": settings.resolved_grader_base_url(), "api_key": auth.mint(settings, org, job_id=job_id)}


async def run(settings: Settings, slots: GraderSlots, org: str, grader: dict, model_sample: str, item) -> dict:
    """The run response for ``model_sample`` graded by ``grader`` with ``item`` as the dataset row."""
    grader = validate_grader(grader)
    request = {"grader": grader, "sample": make_sample(model_sample), "item": item,
               "endpoint": endpoint_for(settings, org)}
    async with slots.hold(org):
        started = time.perf_counter()
        stdout, stderr, returncode = await _child(json.dumps(request).encode())
    if returncode is None:
        late = Outcome(errors={"unresponsive_reward_error": f"grading took longer than {TIMEOUT_SECONDS:g} s"})
        return response(grader, late, time.perf_counter() - started)
    try:
        reply = json.loads(stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = stderr.decode(errors="replace")[-500:]
        raise GraderFailed(f"The grader process failed (exit {returncode}): {tail}", code="grader_failed") from None
    if "error" in reply:  # the child checks the grader again; it agrees with the check above
        error = reply["error"]
        raise InvalidRequest(error["message"], param=error.get("param"), code=error.get("code"))
    return reply["result"]


async def _child(data: bytes) -> tuple[bytes, bytes, int | None]:
    """Run the grading child; returncode None when it was killed for taking too long."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "openft.graders", stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(data), TIMEOUT_SECONDS)
        return stdout, stderr, proc.returncode
    except asyncio.TimeoutError:
        return b"", b"", None
    finally:  # timed out, or the request was cancelled: the child must not outlive it
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
