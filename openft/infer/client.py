"""The API process's handle on the inference worker (standard library and asyncio only: no torch here).

``InferenceClient`` starts ``python -m openft.infer`` on first use, sends it one request at a time (an asyncio lock
serialises them: the worker runs one generation at a time anyway), and starts a new worker when the old one has
died. The wire protocol is documented in ``openft.infer.worker``.

    client = InferenceClient()
    result = await client.chat({"base": "/models/SmolLM2", "adapter": None}, {"messages": [...]})
    async for event in client.chat_stream(model, request):  # {"index", "delta"[, "finish_reason"]} …, then
        ...                                                  # {"done": True, "finish_reason", "usage"}
    await client.close()

Failures raise ``InferenceError`` (``type`` "invalid_request_error" for the caller's 400s, else "server_error"). A
stream's request errors arrive at the first ``__anext__``, before any event, so a caller can still answer with a
plain error response. A caller that stops reading a stream early (a client disconnected) leaves it to the client:
it asks the worker to cancel the generation and drains the rest in the background before the next request runs.
A request during which the worker dies fails with a server_error; the next request starts a fresh worker.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

MAX_LINE = 64 << 20  # the longest reply line accepted (a non-streamed result with n long choices)
CANCEL_TIMEOUT = 30.0  # how long an abandoned request may take to stop before the worker is killed
CLOSE_TIMEOUT = 10.0


class InferenceError(Exception):
    """A failed inference request, in OpenAI's error shape."""

    def __init__(self, message: str, *, type: str = "server_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.message, self.type, self.code, self.param = message, type, code, param

    @property
    def status(self) -> int:
        return 400 if self.type == "invalid_request_error" else 500

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InferenceClient:
    def __init__(self, *, max_adapter_bytes: int | None = None, max_bases: int | None = None,
                 env: Mapping[str, str] | None = None, log_path: str | Path | None = None,
                 python: str = sys.executable):
        """``env``: the worker's environment (default: this process's); ``log_path``: a file that receives the
        worker's stderr (default: this process's stderr)."""
        self._command = [python, "-m", "openft.infer"]
        if max_adapter_bytes is not None:
            self._command += ["--max-adapter-bytes", str(max_adapter_bytes)]
        if max_bases is not None:
            self._command += ["--max-bases", str(max_bases)]
        self._env = dict(env) if env is not None else None
        self._log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()

    @property
    def worker_pid(self) -> int | None:
        """The running worker's process id, if one is running."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def ping(self) -> dict:
        """Start the worker if needed and wait for its answer: ``{"pong": True}``."""
        return await self._call({"op": "ping"})

    async def chat(self, model: dict, request: dict) -> dict:
        """A chat completion: ``{"choices": [{index, message, finish_reason}], "usage"}``. ``model`` is
        ``{"base": path, "adapter": path or None}``; ``request`` the OpenAI request body (``stream`` is ignored)."""
        return await self._call({"op": "chat", "model": model, "request": {**request, "stream": False}})

    async def chat_stream(self, model: dict, request: dict) -> AsyncIterator[dict]:
        """A streamed chat completion: ``{"index", "delta"[, "finish_reason"]}`` events, then
        ``{"done": True, "finish_reason", "usage"}``."""
        rid = uuid.uuid4().hex
        await self._lock.acquire()
        finished = released = False
        try:
            proc = await self._send({"id": rid, "op": "chat", "model": model, "request": {**request, "stream": True}})
            while True:
                reply = await self._reply(proc, rid)
                if "ok" in reply or reply.get("done"):
                    finished = released = True
                    self._lock.release()  # before the last event: a reader that stops there holds nothing
                    if "ok" in reply:
                        raise _error(reply)
                    yield {"done": True, "finish_reason": reply["finish_reason"], "usage": reply["usage"]}
                    return
                reply.pop("id")
                yield reply
        finally:
            if not released:
                self._end(rid, finished)

    async def close(self) -> None:
        """Stop the worker (it finishes the request in hand, then sees end of input and exits)."""
        for task in list(self._background):
            task.cancel()
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), CLOSE_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    # ---- internals -----------------------------------------------------------------------------------------------

    async def _call(self, message: dict) -> dict:
        rid = uuid.uuid4().hex
        await self._lock.acquire()
        finished = False
        try:
            proc = await self._send({"id": rid, **message})
            reply = await self._reply(proc, rid)
            finished = True
            if not reply.get("ok"):
                raise _error(reply)
            return reply["result"]
        finally:
            self._end(rid, finished)

    async def _send(self, message: dict) -> asyncio.subprocess.Process:
        """Write one request line, starting a worker first if none is alive; returns the worker it went to."""
        line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        for attempt in (1, 2):
            proc = await self._worker()
            try:
                proc.stdin.write(line)
                await proc.stdin.drain()
                return proc
            except (BrokenPipeError, ConnectionResetError):
                # The worker died while idle: nothing of this request ran, so a fresh worker may take it.
                await self._lost(proc)
                if attempt == 2:
                    raise InferenceError("The inference worker could not be started.") from None
        raise AssertionError("unreachable")

    async def _worker(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        log = open(self._log_path, "ab") if self._log_path else None  # noqa: SIM115 - the child keeps its own fd
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                env=self._env, limit=MAX_LINE,
                start_new_session=True,  # a Ctrl-C meant for the server must not kill the worker mid-reply
            )
        finally:
            if log is not None:
                log.close()
        return self._proc

    async def _reply(self, proc: asyncio.subprocess.Process, rid: str) -> dict:
        """The next reply line for request ``rid`` (lines of earlier, abandoned requests are skipped)."""
        while True:
            line = await proc.stdout.readline()
            if not line:
                code = await self._lost(proc)
                raise InferenceError(f"The inference worker stopped unexpectedly (exit code {code}).")
            reply = json.loads(line)
            if reply.get("id") == rid:
                return reply

    async def _lost(self, proc: asyncio.subprocess.Process) -> int:
        if self._proc is proc:
            self._proc = None
        if proc.returncode is None:
            proc.kill()
        return await proc.wait()

    def _end(self, rid: str, finished: bool) -> None:
        """Release the worker after request ``rid``; if its reply was not read to the end (the caller went away),
        cancel and drain it in the background first, still holding the lock."""
        proc = self._proc
        if finished or proc is None:
            self._lock.release()
            return
        task = asyncio.get_running_loop().create_task(self._abandon(proc, rid))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _abandon(self, proc: asyncio.subprocess.Process, rid: str) -> None:
        try:
            proc.stdin.write((json.dumps({"id": rid, "op": "cancel"}) + "\n").encode())
            async with asyncio.timeout(CANCEL_TIMEOUT):
                while True:
                    reply = await self._reply(proc, rid)
                    if "ok" in reply or reply.get("done"):
                        return
        except (Exception, asyncio.CancelledError) as exc:  # out of step (or close()): replace the worker
            if self._proc is proc:
                self._proc = None
            if proc.returncode is None:
                proc.kill()
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._lock.release()


def _error(reply: dict) -> InferenceError:
    error = reply.get("error") or {}
    return InferenceError(error.get("message", "Inference failed."), type=error.get("type", "server_error"),
                          code=error.get("code"), param=error.get("param"))
