"""Ray executor: each training attempt is a detached Ray actor, placed by Ray on whichever node has the resources it
asks for, that runs `python -m openft.train JOB_DIR` there and answers poll / signal / kill.

The seam is the local executor's: `start(job_dir, attempt) -> handle`, `signal(job_dir, command)`, `poll(handle)`,
`kill(handle)`. The handle names the actor (one per job, in the "openft" namespace), so any replica connected to the
cluster can observe and control the attempt (`host` is None). Job folders must be on storage every node mounts at
the same path (the attempt reads its spec and writes events and checkpoints there).

When the node running an attempt dies, Ray marks its actor dead; `poll` then says "lost", and the scheduler
resumes the job from its last checkpoint like any attempt that died without a result, saying the node was lost. The trainer is started with
the parent-death signal set, so it never outlives its actor (a lost node's trainer cannot keep writing into the job
folder once the job resumes elsewhere).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from openft import jobdir, modelcard

NAMESPACE = "openft"
RUNTIME_BYTES = 1 << 30  # interpreter, torch and transformers before any weights
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@ray.remote(max_restarts=0, max_concurrency=4)
class Attempt:
    """One training attempt on the node Ray placed it; the actor lives exactly as long as it is looked after."""

    def __init__(self, job_dir: str, attempt: int, python: str):
        self.job_dir = Path(job_dir)
        self.node_id = ray.get_runtime_context().get_node_id()
        log = open(self.job_dir / f"attempt-{attempt}.log", "ab")
        log.write(f"openft: attempt {attempt} on Ray node {self.node_id}\n".encode())
        log.flush()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [python, "-m", "openft.train", job_dir], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent,
        )
        log.close()

    def node(self) -> str:
        return self.node_id

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, command: str) -> None:
        jobdir.write_control(self.job_dir, command)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def attempt_memory(spec: dict) -> int | None:
    """The memory an attempt of ``spec`` (its spec.json) asks Ray for when no setting says: the fp32 weights it
    holds (× 4 for full fine-tuning: gradients and Adam's two moments) + the runtime. Activations depend on the
    batches and are not included; None when the base model is not a local folder (its size is unknown here)."""
    parameters = modelcard.parameter_count(Path(spec.get("base_model_path") or "/nonexistent"))
    if not parameters:
        return None
    return 4 * parameters * (4 if spec.get("lora") is None else 1) + RUNTIME_BYTES


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _name(job_dir: Path) -> str:
    return f"attempt-{job_dir.name}"


class RayExecutor:
    host = None  # any replica connected to the cluster can observe an attempt

    def __init__(self, address: str, python: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 memory: int | None = None, resources: str = "{}", placement_timeout: float = 300):
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, ignore_reinit_error=True)
        self.python, self.placement_timeout = python or sys.executable, placement_timeout
        self.memory = memory
        self.options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "resources": json.loads(resources)}

    def start(self, job_dir: Path, attempt: int) -> dict:
        """Ask Ray for the attempt's actor and return at once; Ray starts it when a node has room (until then the
        job shows as running, and after `placement_timeout` the attempt counts as failed)."""
        self._drop(_name(job_dir))  # a previous attempt's actor, if it was never reaped
        memory = self.memory or attempt_memory(jobdir.read_json(job_dir / jobdir.SPEC) or {})
        options = {**self.options, **({"memory": memory} if memory else {})}
        Attempt.options(name=_name(job_dir), lifetime="detached", **options).remote(
            str(job_dir), attempt, self.python)
        log = job_dir / f"attempt-{attempt}.log"
        return {"executor": "ray", "actor": _name(job_dir), "log": str(log), "created": time.time()}

    def adopt(self, job_dir: Path, attempt: int) -> dict | None:
        if self._actor(_name(job_dir)) is None:
            return None
        return {"executor": "ray", "actor": _name(job_dir), "log": str(job_dir / f"attempt-{attempt}.log"),
                "created": time.time()}

    def signal(self, job_dir: Path, command: str) -> None:
        actor = self._actor(_name(job_dir))
        if actor is not None:
            actor.signal.remote(command)
        jobdir.write_control(job_dir, command)  # an actor still waiting for a node reads it when it starts

    def poll(self, handle: dict) -> str:
        """"running", "exited", "lost" (its node or worker died) or "unplaced" (no node took it in time)."""
        actor = self._actor(handle["actor"])
        if actor is None:  # gone without being reaped here (reaping follows an observed exit): it died
            return "lost"
        ref = actor.running.remote()
        ready, _ = ray.wait([ref], timeout=1)
        if not ready:  # not placed yet, or slow: never declare an attempt dead on a timeout alone
            placed = "on Ray node" in _read(Path(handle["log"]))
            if placed or time.time() - handle["created"] < self.placement_timeout:
                return "running"
            self._drop(handle["actor"])
            return "unplaced"
        try:
            if ray.get(ref):
                return "running"
        except ActorUnavailableError:  # unreachable for now (Ray says it may recover): not dead yet
            return "running"
        except RayActorError:
            self._drop(handle["actor"])
            return "lost"
        self._drop(handle["actor"])
        return "exited"

    def kill(self, handle: dict) -> None:
        actor = self._actor(handle["actor"])
        if actor is not None:
            try:
                ray.get(actor.kill.remote(), timeout=30)
            except (RayActorError, GetTimeoutError):
                pass
            self._drop(handle["actor"])

    def _actor(self, name: str):
        try:
            return ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None

    def _drop(self, name: str) -> None:
        actor = self._actor(name)
        if actor is not None:
            ray.kill(actor, no_restart=True)
