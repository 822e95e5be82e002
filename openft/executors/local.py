"""Local executor: one subprocess per training attempt (`python -m openft.train JOB_DIR`) on this machine.

The seam every executor offers: `start(job_dir, attempt) -> handle`, `signal(job_dir, command)`, `poll(handle)`
("running" | "exited"; a remote executor may also say "lost" or "unplaced"), `kill(handle)` and
`adopt(job_dir, attempt) -> handle | None` (an attempt running for the job whose handle was never recorded: the
service died between starting it and storing its handle). A handle is a small JSON-able dict, stored on the job row, so that a
restarted service can adopt an attempt that outlived it. The process is identified by pid *and* its kernel start
time, so a recycled pid is never mistaken for our trainer. `host` names the machine: only a scheduler on that host
can observe the attempt (the scheduler leases such a job only to replicas on it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from openft import jobdir


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None when the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    return None if fields[0] == "Z" else fields[19]


class LocalExecutor:
    def __init__(self, python: str | None = None):
        self.python = python or sys.executable
        self.children: dict[int, subprocess.Popen] = {}
        self.host = socket.gethostname()

    def start(self, job_dir: Path, attempt: int) -> dict:
        log = open(job_dir / f"attempt-{attempt}.log", "ab")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [self.python, "-m", "openft.train", str(job_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives a restart of the service, and is killed as a group
            env=env,
        )
        log.close()
        self.children[proc.pid] = proc
        return {"executor": "local", "host": self.host, "pid": proc.pid, "start_time": _start_time(proc.pid)}

    def signal(self, job_dir: Path, command: str) -> None:
        jobdir.write_control(job_dir, command)

    def adopt(self, job_dir: Path, attempt: int) -> dict | None:
        want = str(job_dir).encode()
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                parts = cmdline.read_bytes().split(b"\0")
            except OSError:  # gone meanwhile
                continue
            if parts[1:4] == [b"-m", b"openft.train", want]:
                pid = int(cmdline.parent.name)
                started = _start_time(pid)
                if started is not None:
                    return {"executor": "local", "host": self.host, "pid": pid, "start_time": started}
        return None

    def poll(self, handle: dict) -> str:
        pid = handle["pid"]
        child = self.children.get(pid)
        if child is not None:
            if child.poll() is None:
                return "running"
            del self.children[pid]
            return "exited"
        started = _start_time(pid)
        return "running" if started is not None and started == handle["start_time"] else "exited"

    def kill(self, handle: dict) -> None:
        if self.poll(handle) == "running":
            try:
                os.killpg(handle["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
