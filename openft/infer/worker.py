"""The inference worker: one long-lived process that owns an ``Engine`` and answers requests from the API process,
one at a time, as newline-delimited JSON on stdin/stdout (``python -m openft.infer [--max-adapter-bytes N]
[--max-bases N]``). It imports torch but never the web stack or SQL.

Requests (one JSON object a line on stdin)::

    {"id": str, "op": "ping"}
    {"id": str, "op": "chat", "model": {"base": path, "adapter": path | null, "parents": [path, …]},
     "request": {...chat request...}}     parents (optional): adapters merged into the base first, oldest first
    {"id": str, "op": "cancel"}      stop request ``id`` if it is still running (a stream whose reader went away)

Replies (one JSON object a line on stdout; every reply carries the request's ``id``)::

    {"id", "ok": true, "result": {"pong": true}}                                       ping
    {"id", "ok": true, "result": {"choices": [{index, message, finish_reason}], "usage"}}  chat, "stream" false
    {"id", "index": i, "delta": {...}[, "finish_reason": str]}  ...                     chat, "stream" true,
    {"id", "done": true, "finish_reason": str, "usage": {...}}                          ... then this last line
    {"id", "ok": false, "error": {"message", "type", "code", "param"}}                  any failure (also ends a
                                                                                         stream); id null for a
                                                                                         line that is not JSON

Error types: ``invalid_request_error`` for a bad request (the caller's 400), ``server_error`` for anything else;
a cancelled request ends with code ``cancelled``. A cancel for a request that is no longer running gets no reply.
The worker exits cleanly at end of input. Everything else the process prints (library warnings, tracebacks) goes to
stderr: stdout carries the protocol only.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import traceback
from collections import deque

from openft.errors import InvalidRequest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m openft.infer")
    parser.add_argument("--max-adapter-bytes", type=int, default=None)
    parser.add_argument("--max-bases", type=int, default=None)
    args = parser.parse_args(argv)
    out = _protocol_stdout()
    inbox = Inbox(sys.stdin.buffer)
    engine = None
    while (line := inbox.next()) is not None:
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError:
            _send(out, _error(None, "invalid_request_error", "Each request must be one JSON object on one line."))
            continue
        op, rid = message.get("op"), message.get("id")
        if op == "ping":
            _send(out, {"id": rid, "ok": True, "result": {"pong": True}})
        elif op == "cancel":
            continue  # the request it names has already finished
        elif op == "chat":
            if engine is None:
                engine = _engine(args)
            _chat(engine, message, inbox, out)
        else:
            _send(out, _error(rid, "invalid_request_error", f"Unknown op: {op!r}", param="op"))
    return 0


def _engine(args):
    from openft.infer.engine import Engine  # torch loads at the first chat, so a ping answers at once

    limits = {"max_adapter_bytes": args.max_adapter_bytes, "max_bases": args.max_bases}
    return Engine(**{key: value for key, value in limits.items() if value is not None})


def _chat(engine, message: dict, inbox: Inbox, out) -> None:
    from openft.infer.engine import Cancelled

    rid = message.get("id")
    model, request = message.get("model"), message.get("request")
    try:
        if not (isinstance(model, dict) and isinstance(model.get("base"), str)
                and isinstance(model.get("adapter"), (str, type(None)))
                and all(isinstance(p, str) for p in model.get("parents") or [])):
            raise InvalidRequest("'model' must be {'base': path, 'adapter': path or null, 'parents': [path]}.",
                                 param="model")
        parents = tuple(model.get("parents") or ())
        if not isinstance(request, dict):
            raise InvalidRequest("'request' must be a chat completions request object.")
        cancelled = lambda: inbox.cancel_requested(rid)  # noqa: E731
        if request.get("stream"):
            for event in engine.chat_stream(model["base"], model["adapter"], request, cancelled, parents):
                _send(out, {"id": rid, **event})
        else:
            result = engine.chat(model["base"], model["adapter"], request, cancelled, parents)
            _send(out, {"id": rid, "ok": True, "result": result})
    except InvalidRequest as exc:
        _send(out, _error(rid, "invalid_request_error", exc.message, param=exc.param, code=exc.code))
    except Cancelled:
        _send(out, _error(rid, "server_error", "The request was cancelled.", code="cancelled"))
    except Exception as exc:  # noqa: BLE001 - the worker outlives a failed request (e.g. out of memory)
        traceback.print_exc()
        _send(out, _error(rid, "server_error", f"Inference failed: {type(exc).__name__}: {exc}"))


class Inbox:
    """Request lines, read by a thread so that a cancel can be seen while a generation runs."""

    def __init__(self, stream):
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._held: deque[bytes | None] = deque()  # read while looking for a cancel, not yet handled
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            if line.strip():
                self._lines.put(line)
        self._lines.put(None)  # end of input

    def next(self) -> bytes | None:
        """The next request line, waiting for it; None at end of input."""
        return self._held.popleft() if self._held else self._lines.get()

    def cancel_requested(self, rid) -> bool:
        """Whether a cancel for ``rid`` has arrived (it is consumed); other lines keep their place in the queue."""
        while True:
            try:
                self._held.append(self._lines.get_nowait())
            except queue.Empty:
                break
        for line in self._held:
            if line is not None and b'"cancel"' in line:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if message.get("op") == "cancel" and message.get("id") == rid:
                    self._held.remove(line)
                    return True
        return False


def _protocol_stdout():
    """A private handle on the real stdout for protocol lines; fd 1 (and print) now go to stderr."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _send(out, message: dict) -> None:
    out.write(json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n")
    out.flush()


def _error(rid, type_: str, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"id": rid, "ok": False, "error": {"message": message, "type": type_, "code": code, "param": param}}
