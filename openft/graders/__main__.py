"""``python -m openft.graders``: grade once. Reads ``{"grader", "sample", "item", "endpoint"}`` as JSON on stdin and
writes ``{"result": <run response>}`` or ``{"error": {message, param, code}}`` as one JSON line on stdout.

The API grades this way so that its own process never imports torch (the cosine metric) nor holds the scoring
libraries. Whatever the libraries print goes to stderr, so stdout carries exactly the one reply.
"""

from __future__ import annotations

import json
import os
import sys

from openft.errors import InvalidRequest
from openft.graders import Endpoint, run_grader


def main() -> None:
    reply_to = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    request = json.load(sys.stdin)
    try:
        result = run_grader(request["grader"], request["sample"], request.get("item"),
                            endpoint=Endpoint(**request.get("endpoint", {})))
        reply = {"result": result}
    except InvalidRequest as exc:
        reply = exc.body()
    reply_to.write(json.dumps(reply) + "\n")
    reply_to.flush()


if __name__ == "__main__":
    main()
