"""The inference worker: one long-lived process that owns an ``Engine`` and answers many requests from the API process
at once, as newline-delimited JSON on stdin/stdout (``python -m openft.infer [--max-adapter-bytes N] [--max-bases N]
[--default-max-tokens N] [--max-batch-rows N] [--max-batch-tokens N] [--threads N] [--backend auto|cpu|vllm]``).
It imports torch but never the web stack or SQL.

Requests (one JSON object a line on stdin)::

    {"id": str, "op": "ping"}
    {"id": str, "op": "chat", "model": {"base": path, "adapter": path | null, "parents": [path, …]},
     "request": {...chat request...}}     parents (optional): adapters merged into the base first, oldest first
    {"id": str, "op": "cancel"}      stop request ``id`` at once (its reader went away); its rows leave the batch

Replies (one JSON object a line on stdout; every reply carries the request's ``id``; replies of different requests
interleave)::

    {"id", "ok": true, "result": {"pong": true}}                                       ping
    {"id", "ok": true, "result": {"choices": [{index, message, finish_reason}], "usage"}}  chat, "stream" false
    {"id", "index": i, "delta": {...}[, "finish_reason": str]}  ...                     chat, "stream" true,
    {"id", "done": true, "finish_reason": str, "usage": {...}}                          ... then this last line
    {"id", "ok": false, "error": {"message", "type", "code", "param"}}                  any failure (also ends a
                                                                                         stream); id null for a
                                                                                         line that is not JSON
    {"id": null, "beat": true}       at least once a second while requests run: the worker is alive (a client that
                                     hears nothing for long while it waits can tell a hung worker from a slow one)
    {"id": null, "loading": true}    before loading torch or a model, which may take long; the next line ends it

Error types: ``invalid_request_error`` for a bad request (the caller's 400), ``server_error`` for anything else;
a cancelled request ends with code ``cancelled``. A cancel for a request that is no longer running gets no reply.
Requests are read between decode steps, so a new one joins the running batch at the next step. At end of input the
worker finishes what runs and exits. Everything else the process prints (library warnings, tracebacks, one line per
cancelled request) goes to stderr: stdout carries the protocol only.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
import traceback

from openft.errors import InvalidRequest

BEAT_SECONDS = 1.0
_IDLE = object()  # nothing new on stdin


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m openft.infer")
    for flag in ("max-adapter-bytes", "max-bases", "default-max-tokens", "max-batch-rows", "max-batch-tokens"):
        parser.add_argument(f"--{flag}", type=int, default=None)
    parser.add_argument("--backend", choices=["auto", "cpu", "vllm"], default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    out = _protocol_stdout()
    lines: queue.Queue[bytes | None] = queue.Queue()
    threading.Thread(target=_read, args=(sys.stdin.buffer, lines), daemon=True).start()
    engine, open_input, beat = None, True, time.monotonic()
    while open_input or (engine is not None and engine.busy()):
        busy = engine is not None and engine.busy()
        line = _next(lines, block=not busy) if open_input else _IDLE
        while line is not _IDLE:  # everything that has arrived joins before the next step
            if line is None:
                open_input = False
                break
            engine = _handle(line, engine, args, out)
            line = _next(lines, block=False)
        if engine is not None and engine.busy():
            _step(engine, out)
            if time.monotonic() - beat >= BEAT_SECONDS:
                _send(out, {"id": None, "beat": True})
                beat = time.monotonic()
    return 0


def _read(stream, lines: queue.Queue) -> None:
    for line in stream:
        if line.strip():
            lines.put(line)
    lines.put(None)  # end of input


def _next(lines: queue.Queue, *, block: bool):
    try:
        return lines.get(block=block)
    except queue.Empty:
        return _IDLE


def _handle(line: bytes, engine, args, out):
    """Act on one request line; returns the engine (created at the first chat, so a ping answers at once)."""
    try:
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("not an object")
    except ValueError:
        _send(out, _error(None, "invalid_request_error", "Each request must be one JSON object on one line."))
        return engine
    op, rid = message.get("op"), message.get("id")
    if op == "ping":
        _send(out, {"id": rid, "ok": True, "result": {"pong": True}})
    elif op == "cancel":
        if engine is not None and engine.cancel(rid):
            print(f"request {rid} cancelled", file=sys.stderr, flush=True)
            _send(out, _error(rid, "server_error", "The request was cancelled.", code="cancelled"))
    elif op == "chat":
        if engine is None:
            _send(out, {"id": None, "loading": True})
            engine = _engine(args)
            engine.on_load = lambda: _send(out, {"id": None, "loading": True})
        _submit(engine, rid, message, out)
    else:
        _send(out, _error(rid, "invalid_request_error", f"Unknown op: {op!r}", param="op"))
    return engine


def _engine(args):
    """The torch engine, or vLLM's (``--backend vllm``, or ``auto`` where CUDA and vLLM are present)."""
    import torch

    from openft.infer import vllm_engine  # torch loads at the first chat

    if args.threads:
        torch.set_num_threads(args.threads)

    limits = {name: getattr(args, name) for name in
              ("max_adapter_bytes", "max_bases", "default_max_tokens", "max_batch_rows", "max_batch_tokens")}
    limits = {key: value for key, value in limits.items() if value is not None}
    if args.backend == "vllm" or (args.backend == "auto" and vllm_engine.available()):
        return vllm_engine.VllmEngine(**limits)
    from openft.infer.engine import Engine

    return Engine(**limits)


def _submit(engine, rid, message: dict, out) -> None:
    model, request = message.get("model"), message.get("request")
    try:
        if not (isinstance(model, dict) and isinstance(model.get("base"), str)
                and isinstance(model.get("adapter"), (str, type(None)))
                and all(isinstance(p, str) for p in model.get("parents") or [])):
            raise InvalidRequest("'model' must be {'base': path, 'adapter': path or null, 'parents': [path]}.",
                                 param="model")
        if not isinstance(request, dict):
            raise InvalidRequest("'request' must be a chat completions request object.")
        emit = lambda event: _send(out, {"id": rid, **event})  # noqa: E731
        engine.submit(rid, model["base"], model["adapter"], request, emit, tuple(model.get("parents") or ()))
    except InvalidRequest as exc:
        _send(out, _error(rid, "invalid_request_error", exc.message, param=exc.param, code=exc.code))


def _step(engine, out) -> None:
    try:
        engine.step()
    except Exception as exc:  # noqa: BLE001 - the worker outlives a failed step (e.g. out of memory)
        traceback.print_exc()
        for rid in engine.abort():  # what ran in that step cannot be trusted: fail it, keep serving the rest
            _send(out, _error(rid, "server_error", f"Inference failed: {type(exc).__name__}: {exc}"))


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
