"""Grading for the API: the grader is checked in the API process (pure Python), then graded in a child process,
``python -m openft.graders``, so that the API never imports torch (the cosine metric) or the scoring libraries,
and a grader that crashes or hangs takes down only that child.

At most ``SLOTS`` graders run at once; a request beyond that waits for a slot. A child that does not answer
within ``TIMEOUT_SECONDS`` is killed (its python-grader sandbox dies with it) and the run scores 0 with
unresponsive_reward_error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from openft.config import Settings
from openft.errors import APIError, InvalidRequest
from openft.graders.outcome import Outcome, response
from openft.graders.templates import make_sample
from openft.graders.validate import validate_grader

TIMEOUT_SECONDS = 300.0
SLOTS = threading.BoundedSemaphore(4)  # the cosine metric alone loads ~0.5 GB of torch per child


class GraderFailed(APIError):
    status = 500
    type = "server_error"


def run(settings: Settings, grader: dict, model_sample: str, item) -> dict:
    """The run response for ``model_sample`` graded by ``grader`` with ``item`` as the dataset row."""
    grader = validate_grader(grader)
    request = {"grader": grader, "sample": make_sample(model_sample), "item": item,
               "endpoint": {"base_url": settings.resolved_grader_base_url(), "api_key": settings.grader_model_api_key}}
    started = time.perf_counter()
    with SLOTS:
        try:
            child = subprocess.run([sys.executable, "-m", "openft.graders"], input=json.dumps(request).encode(),
                                   capture_output=True, timeout=TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            late = Outcome(errors={"unresponsive_reward_error": f"grading took longer than {TIMEOUT_SECONDS:g} s"})
            return response(grader, late, time.perf_counter() - started)
    try:
        reply = json.loads(child.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = child.stderr.decode(errors="replace")[-500:]
        message = f"The grader process failed (exit {child.returncode}): {tail}"
        raise GraderFailed(message, code="grader_failed") from None
    if "error" in reply:  # the child checks the grader again; it agrees with the check above
        error = reply["error"]
        raise InvalidRequest(error["message"], param=error.get("param"), code=error.get("code"))
    return reply["result"]
