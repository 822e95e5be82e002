"""The API process's handle on the inference workers (standard library and asyncio only: no torch here).

``InferenceClient`` starts ``workers`` processes ``python -m openft.infer`` on first use and sends them many
requests at once: each worker batches what it is sent (see ``openft.infer.worker`` for the wire protocol), and its
replies are routed to their requests by id. A request goes to the worker that last served its base model (so
requests for one base batch together) unless another has fewer requests in hand.

    client = InferenceClient(workers=2)
    result = await client.chat({"base": "/models/SmolLM2", "adapter": None}, {"messages": [...]})
    async for event in client.chat_stream(model, request):  # {"index", "delta"[, "finish_reason"]} …, then
        ...                                                  # {"done": True, "finish_reason", "usage"}
    await client.close()

Failures raise ``InferenceError`` in OpenAI's error shape, with the HTTP status to answer: 400 for a bad request,
503 (with ``retry_after``) when the worker it would go to already holds ``max_batch_rows + max_queue`` rows (choices
of running or waiting requests) or a worker was lost, 504 past ``request_timeout``, 500 otherwise. A stream's request errors arrive at the first ``__anext__``, before
any event, so a caller can still answer with a plain error response.

Robustness. A caller that stops reading (a client disconnected, a cancelled task) makes the client tell the worker
to cancel that request at once, freeing its batch rows. A worker that dies is replaced by the next request; its
in-flight non-streamed requests are retried once on the fresh worker, its streams end with a 503. A worker that says
nothing (no reply, no heartbeat) for ``stall_timeout`` seconds while it has requests in hand, and is not starting
or loading a model, is hung: it is killed
and handled as dead.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

MAX_LINE = 64 << 20  # the longest reply line accepted (a non-streamed result with n long choices)
CLOSE_TIMEOUT = 10.0
_LOST = object()  # put on a request's queue when its worker died


class InferenceError(Exception):
    """A failed inference request, in OpenAI's error shape."""

    def __init__(self, message: str, *, type: str = "server_error", code: str | None = None,
                 param: str | None = None, status: int | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message, self.type, self.code, self.param = message, type, code, param
        self.status = status or (400 if type == "invalid_request_error" else 500)
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class WorkerLost(InferenceError):
    def __init__(self, code: int | None):
        super().__init__(f"The inference worker stopped unexpectedly (exit code {code}) and is being restarted; "
                         "retry the request.", code="inference_worker_lost", status=503, retry_after=1)


class InferenceClient:
    def __init__(self, *, workers: int = 1, max_adapter_bytes: int | None = None, max_bases: int | None = None,
                 default_max_tokens: int | None = None, max_batch_rows: int | None = None,
                 max_batch_tokens: int | None = None, threads: int | None = None, max_queue: int = 64,
                 request_timeout: float = 600.0, stall_timeout: float = 60.0, backend: str = "auto", env: Mapping[str, str] | None = None,
                 log_path: str | Path | None = None, python: str = sys.executable):
        """``env``: the workers' environment (default: this process's); ``log_path``: a file that receives the
        workers' stderr (default: this process's stderr). The other arguments are the settings of the same names."""
        command = [python, "-m", "openft.infer", "--backend", backend]
        flags = {"--max-adapter-bytes": max_adapter_bytes, "--max-bases": max_bases,
                 "--default-max-tokens": default_max_tokens, "--max-batch-rows": max_batch_rows,
                 "--max-batch-tokens": max_batch_tokens, "--threads": threads}
        for flag, value in flags.items():
            if value is not None:
                command += [flag, str(value)]
        self._workers = [_Worker(command, None if env is None else dict(env), log_path, stall_timeout)
                         for _ in range(workers)]
        self._capacity = (max_batch_rows or 32) + max_queue  # rows one worker may hold, running or waiting
        self._timeout = request_timeout
        self._affinity: dict[str, _Worker] = {}  # base model -> the worker that last served it

    @classmethod
    def from_settings(cls, settings, **kwargs) -> InferenceClient:
        return cls(workers=settings.inference_workers, max_adapter_bytes=settings.inference_max_adapter_bytes,
                   max_bases=settings.inference_max_bases, default_max_tokens=settings.inference_default_max_tokens,
                   max_batch_rows=settings.inference_max_batch_rows,
                   max_batch_tokens=settings.inference_max_batch_tokens, threads=settings.inference_threads,
                   max_queue=settings.inference_max_queue,
                   request_timeout=settings.inference_request_timeout,
                   stall_timeout=settings.inference_stall_timeout, backend=settings.inference_backend, **kwargs)

    @property
    def worker_pid(self) -> int | None:
        """The first worker's process id, if it is running."""
        return self._workers[0].pid

    @property
    def worker_pids(self) -> list[int | None]:
        return [worker.pid for worker in self._workers]

    def in_flight(self) -> int:
        """Requests sent to the workers and not yet answered in full."""
        return sum(len(worker.replies) for worker in self._workers)

    async def ping(self) -> dict:
        """Start the first worker if needed and wait for its answer: ``{"pong": True}``."""
        async with self._call(None, {"op": "ping"}) as replies:
            return _result(await replies.next())

    async def chat(self, model: dict, request: dict) -> dict:
        """A chat completion: ``{"choices": [{index, message, finish_reason}], "usage"}``. ``model`` is
        ``{"base": path, "adapter": path or None, "parents": [path]}``; ``request`` the OpenAI request body."""
        message = {"op": "chat", "model": model, "request": {**request, "stream": False}}
        for attempt in (1, 2):
            try:
                async with self._call(model, message) as replies:
                    return _result(await replies.next())
            except WorkerLost:
                if attempt == 2:  # nothing of a non-streamed answer was seen: one retry on a fresh worker
                    raise
        raise AssertionError("unreachable")

    async def chat_stream(self, model: dict, request: dict) -> AsyncIterator[dict]:
        """A streamed chat completion: ``{"index", "delta"[, "finish_reason"]}`` events, then
        ``{"done": True, "finish_reason", "usage"}``."""
        message = {"op": "chat", "model": model, "request": {**request, "stream": True}}
        async with self._call(model, message) as replies:
            while True:
                reply = await replies.next()
                if "ok" in reply:
                    _result(reply)  # raises: a stream ends with "done", never "ok": true
                reply.pop("id")
                yield reply
                if reply.get("done"):
                    return

    async def close(self) -> None:
        """Stop the workers (each finishes what it has in hand, then sees end of input and exits)."""
        await asyncio.gather(*(worker.close() for worker in self._workers))

    # ---- internals -----------------------------------------------------------------------------------------------

    def _route(self, model: dict, rows: int) -> _Worker:
        base = json.dumps([model.get("base"), model.get("parents") or []])
        least = min(self._workers, key=lambda w: w.rows)
        worker = self._affinity.get(base, least)
        if worker.rows > least.rows + rows:  # busier than it is worth for a shared batch
            worker = least
        if worker.rows and worker.rows + rows > self._capacity:
            raise InferenceError("The inference workers are at capacity; retry the request shortly.",
                                 code="server_overloaded", status=503, retry_after=1)
        self._affinity[base] = worker
        return worker

    def _call(self, model: dict | None, message: dict) -> _Call:
        rows = (message.get("request") or {}).get("n") or 1
        worker = self._workers[0] if model is None else self._route(model, rows if isinstance(rows, int) else 1)
        return _Call(worker, message, rows, time.monotonic() + self._timeout)


class _Call:
    """One request in flight on one worker: ``async with`` sends it, ``next()`` awaits its replies, and leaving the
    block before its last reply (the caller went away, or timed out) cancels it in the worker."""

    def __init__(self, worker: _Worker, message: dict, rows: int, deadline: float):
        self.worker, self.message, self.rows, self.deadline = worker, message, rows, deadline
        self.rid = uuid.uuid4().hex
        self.finished = False
        worker.rows += rows  # counted from now: the capacity check and the send must not be split by an await

    async def __aenter__(self) -> _Call:
        try:
            self.queue = await self.worker.send(self.rid, self.message)
        except BaseException:
            self.worker.rows -= self.rows
            raise
        return self

    async def next(self) -> dict:
        try:
            async with asyncio.timeout(self.deadline - time.monotonic()):
                reply = await self.queue.get()
        except TimeoutError:
            raise InferenceError("The request took longer than the inference timeout and was stopped.",
                                 code="timeout", status=504) from None
        if reply is _LOST:
            self.finished = True
            raise WorkerLost(self.worker.exit_code)
        if "ok" in reply or reply.get("done"):
            self.finished = True
        return reply

    async def __aexit__(self, *exc_info) -> None:
        self.worker.rows -= self.rows
        self.worker.replies.pop(self.rid, None)
        if not self.finished:
            self.worker.cancel(self.rid)


class _Worker:
    """One worker process, its reader task (which routes reply lines to requests) and its hang watchdog."""

    def __init__(self, command: list[str], env: dict | None, log_path, stall_timeout: float):
        self.command, self.env, self.log_path, self.stall_timeout = command, env, log_path, stall_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.replies: dict[str, asyncio.Queue] = {}  # request id -> its reply lines
        self.rows = 0  # choices of the requests in hand (running or waiting in the worker)
        self.exit_code: int | None = None
        self.heard = time.monotonic()  # when the worker last said anything
        self.loading = False  # starting, or loading a model: silence is expected, not a hang
        self._tasks: set[asyncio.Task] = set()
        self._starting = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def send(self, rid: str, message: dict) -> asyncio.Queue:
        line = (json.dumps({"id": rid, **message}, separators=(",", ":")) + "\n").encode()
        for attempt in (1, 2):
            proc = await self._alive()
            queue = self.replies[rid] = asyncio.Queue()
            try:
                proc.stdin.write(line)
                await proc.stdin.drain()
                return queue
            except (BrokenPipeError, ConnectionResetError):
                # The worker died while idle: nothing of this request ran, so a fresh worker may take it.
                del self.replies[rid]
                await self._lost(proc)
        raise InferenceError("The inference worker could not be started.", status=503, retry_after=1)

    def cancel(self, rid: str) -> None:
        if self.proc is not None and self.proc.returncode is None and not self.proc.stdin.is_closing():
            self.proc.stdin.write((json.dumps({"id": rid, "op": "cancel"}) + "\n").encode())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), CLOSE_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _alive(self) -> asyncio.subprocess.Process:
        async with self._starting:
            if self.proc is not None and self.proc.returncode is None:
                return self.proc
            log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - the child keeps its own fd
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                    env=self.env, limit=MAX_LINE,
                    start_new_session=True,  # a Ctrl-C meant for the server must not kill the worker mid-reply
                )
            finally:
                if log is not None:
                    log.close()
            self.heard, self.loading = time.monotonic(), True
            for job in (self._read(self.proc), self._watch(self.proc)):
                task = asyncio.get_running_loop().create_task(job)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return self.proc

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        while line := await proc.stdout.readline():
            self.heard = time.monotonic()
            reply = json.loads(line)
            self.loading = bool(reply.get("loading"))
            queue = self.replies.get(reply.get("id"))
            if queue is not None:
                queue.put_nowait(reply)
        await self._lost(proc)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        while proc.returncode is None:
            await asyncio.sleep(min(1.0, self.stall_timeout / 4))
            if self.replies and not self.loading and time.monotonic() - self.heard > self.stall_timeout:
                print(f"openft: inference worker {proc.pid} silent for {self.stall_timeout:g}s; killing it",
                      file=sys.stderr, flush=True)
                await self._lost(proc)

    async def _lost(self, proc: asyncio.subprocess.Process) -> None:
        """``proc`` is dead or hung: kill it, and fail every request it had in hand."""
        if proc.returncode is None:
            proc.kill()
        self.exit_code = await proc.wait()
        if self.proc is proc:
            self.proc = None
            for queue in self.replies.values():
                queue.put_nowait(_LOST)
            self.replies.clear()


def _result(reply: dict) -> dict:
    if not reply.get("ok"):
        error = reply.get("error") or {}
        raise InferenceError(error.get("message", "Inference failed."), type=error.get("type", "server_error"),
                             code=error.get("code"), param=error.get("param"))
    return reply["result"]
