"""The python grader: untrusted ``grade(sample, item) -> float`` run in a sandboxed process of its own.

The process is ``python -I -S openft/graders/sandbox_runner.py`` (isolated mode, no site-packages: the grader
gets the standard library only, unlike OpenAI's image with numpy and friends), with an empty environment, its
working directory a fresh temporary folder, in a new session so that the whole process group can be killed. The
runner confines itself before any user code runs: rlimits, a private network namespace, no capabilities, Landlock,
seccomp and an audit hook; its docstring lists each layer. Here the parent keeps the wall clock and reads the
verdict.

Limits (OpenAI documents 2 minutes and 2 GB): 120 s of wall and CPU time, 2 GiB of address space, 100 MiB per
written file and 256 MiB of files in total (python_grader_runtime_error past it), 64 open files, no new processes
and no threads. ``image_tag`` is accepted and ignored: there is one image, this interpreter's standard library.

What a grader sees as errors, and the flag it raises (the reward is 0 each time):
- an exception, a blocked operation (it surfaces as PermissionError), MemoryError, a non-number returned, or no
  ``grade`` defined: python_grader_runtime_error, with "Type: message (line N)" in its details;
- no answer within the time limit (wall clock or CPU): unresponsive_reward_error;
- the process dying some other way (a signal, a sandbox that could not be set up): python_grader_server_error,
  with a short type such as ``killed_by_signal:SIGSEGV``.

Limits of the mechanism, honestly: where the kernel offers no Landlock (Linux < 5.13, or disabled), file access
is kept to the box and the standard library only by the audit hook, which determined Python code may defeat (for
instance with a path object whose ``__fspath__`` answers differently the second time it is asked); the same holds
for sockets and processes without seccomp (other architectures) and network namespaces (no user namespaces and
not root). Run as root, the sandboxed process keeps uid 0 (without capabilities), so without Landlock, past the
audit hook, it could read the files that root owns. Metadata (``os.stat``) of any path stays visible. The total
disk use is measured every 0.1 s, so a grader may overshoot it by what it writes in that time before it is killed.
Run the service as an unprivileged user on a kernel with Landlock for the strongest setting.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openft.graders.outcome import GradeError

RUNNER = Path(__file__).with_name("sandbox_runner.py")
TIMEOUT_SECONDS = 120.0
MEMORY_BYTES = 2 << 30
FILE_BYTES = 100 << 20
DISK_BYTES = 256 << 20  # all of one grader's files together; checked every DISK_CHECK_SECONDS
DISK_CHECK_SECONDS = 0.1


def run_python(source: str, sample: dict, item: dict, *, timeout: float = TIMEOUT_SECONDS,
               memory_bytes: int = MEMORY_BYTES, file_bytes: int = FILE_BYTES, disk_bytes: int = DISK_BYTES) -> float:
    """The grader's score, or GradeError with the flag that says why there is none.

    >>> source = "def grade(sample, item):\\n    return len(sample['output_text']) / item['n']"
    >>> run_python(source, {"output_text": "abc"}, {"n": 4})
    0.75
    """
    with tempfile.TemporaryDirectory(prefix="openft-python-grader-", ignore_cleanup_errors=True) as root:
        box = Path(root) / "box"
        box.mkdir(mode=0o700)
        limits = {"cpu_seconds": max(1, round(timeout)), "memory_bytes": memory_bytes, "file_bytes": file_bytes}
        request = {"source": source, "sample": sample, "item": item, "box": str(box), "limits": limits}
        (Path(root) / "request.json").write_text(json.dumps(request))
        with open(Path(root) / "request.json", "rb") as stdin, open(Path(root) / "out", "w+b") as out, \
                open(Path(root) / "err", "w+b") as err:
            returncode, timed_out = _run(stdin, out, err, box, timeout, disk_bytes)
            out.seek(0)
            reply = out.read(1 << 20)
            err.seek(0)
            log = err.read(8000).decode(errors="replace")
    return _verdict(returncode, timed_out, reply, log, timeout)


def _run(stdin, out, err, box: Path, timeout: float, disk_bytes: int) -> tuple[int, bool]:
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", str(RUNNER), str(os.getpid())], stdin=stdin,
                                stdout=out, stderr=err, cwd=box, env={}, start_new_session=True, close_fds=True)
    except OSError as exc:
        raise GradeError("python_grader_server_error", f"sandbox_start_failed: {exc}") from None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return proc.wait(timeout=min(DISK_CHECK_SECONDS, max(0.0, deadline - time.monotonic()))), False
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    raise
            if _disk_use(box) > disk_bytes:
                raise DiskFull()
    except BaseException as exc:  # the limits, or this thread being interrupted: the sandbox must not outlive it
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group; the unreaped leader keeps the group id ours
        proc.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            return proc.returncode, True
        if isinstance(exc, DiskFull):
            raise GradeError("python_grader_runtime_error", f"the grader wrote more than {disk_bytes} bytes to "
                             "disk in total") from None
        raise


class DiskFull(Exception):
    pass


def _disk_use(box: Path) -> int:
    """Bytes the grader's files occupy (allocated blocks, so sparse files count as what they really use), and
    a block's worth for every entry, so that a flood of empty files counts too."""
    total = 0
    for folder, dirs, files in os.walk(box):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512 + 4096
            except OSError:
                pass
    return total


def _verdict(returncode: int, timed_out: bool, reply: bytes, log: str, timeout: float) -> float:
    if timed_out or returncode == -signal.SIGXCPU:
        raise GradeError("unresponsive_reward_error", f"the python grader gave no answer within {timeout:g} s")
    try:
        result = json.loads(reply.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = None
    if not isinstance(result, dict) or not result.keys() & {"score", "runtime_error", "server_error"}:
        cause = f"killed_by_signal:{_signal_name(-returncode)}" if returncode < 0 else f"no_result:exit_{returncode}"
        raise GradeError("python_grader_server_error", f"{cause}: {log[-300:].strip()}".rstrip(": "))
    if "server_error" in result:
        raise GradeError("python_grader_server_error", str(result["server_error"]))
    if "runtime_error" in result:
        raise GradeError("python_grader_runtime_error", str(result["runtime_error"]))
    score = result["score"]
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise GradeError("python_grader_runtime_error", "grade() did not return a finite number")
    return float(score)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
