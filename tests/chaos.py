"""Chaos runs shared by tests/test_chaos.py (small) and bench/chaos.py (full size): jobs of all three methods, each
beside an undisturbed control of the same seed, while a random schedule SIGKILLs their training processes (at
random moments, right as a checkpoint folder appears, and around validation steps), pauses and resumes them, and
cancels some. Then every job is judged against its control:

* a job that was not cancelled ends ``succeeded`` with exactly the control's per-step metrics (float equality) and
  the same final adapter, bit for bit;
* its events report each step once, in order (a step re-run after a crash is not reported again);
* every checkpoint is listed once (no step, path or model name twice), and the control's checkpoints are all there;
* a cancelled job ends ``cancelled`` with no checkpoint listed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from openai import OpenAI
from safetensors.torch import load_file

from tests.helpers import (FUZZY_GRADER, TERMINAL, all_events, chat_rows, preference_rows, reinforcement_rows,
                           upload)

METHODS = {
    "supervised": ({"n_epochs": 2, "batch_size": 2}, lambda: chat_rows(12), None),
    "dpo": ({"n_epochs": 2, "batch_size": 2, "beta": 0.2}, lambda: preference_rows(12), None),
    "reinforcement": ({"n_epochs": 2, "batch_size": 2, "compute_multiplier": 0.5, "eval_interval": 2,
                       "reasoning_effort": "low"}, lambda: reinforcement_rows(10), lambda: reinforcement_rows(2, 50)),
}
SETTINGS = {"max_attempts": 10_000, "cancel_grace_seconds": 2}  # the chaos, not a retry limit, decides


def method_body(kind: str, epochs: int = 2) -> dict:
    hp = {**METHODS[kind][0], "n_epochs": epochs}
    body = {"hyperparameters": hp, **({"grader": FUZZY_GRADER} if kind == "reinforcement" else {})}
    return {"type": kind, kind: body}


@dataclass
class Pair:
    kind: str
    control: str
    subject: str
    cancel: bool = False  # the schedule cancels this one
    kills: int = 0
    paused: int = 0
    mark: int = -1  # the last step reported when the schedule last disrupted this job
    problems: list[str] = field(default_factory=list)


def processes(module: bytes) -> list[tuple[int, list[bytes]]]:
    """(pid, command line) of every process running ``python -m <module> …``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            parts = cmdline.read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if module in parts:
            found.append((int(cmdline.parent.name), parts))
    return found


def trainer_pids(data_dir: Path, job_id: str) -> list[int]:
    """The training processes of one job (``python -m openft.train <data_dir>/jobs/<job_id>``)."""
    want = str(data_dir / "jobs" / job_id).encode()
    return [pid for pid, parts in processes(b"openft.train") if any(p.rstrip(b"/").endswith(want) for p in parts)]


def kill_all(pids: list[int]) -> int:
    killed = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def create_pairs(client: OpenAI, n: int, rng: random.Random, cancel_every: int = 0, epochs: int = 2) -> list[Pair]:
    files: dict[str, tuple[str, str | None]] = {}
    pairs = []
    for i in range(n):
        kind = list(METHODS)[i % len(METHODS)]
        if kind not in files:
            _, train, valid = METHODS[kind]
            files[kind] = (upload(client, train()), upload(client, valid(), "valid.jsonl") if valid else None)
        train, valid = files[kind]
        seed = rng.randrange(1 << 30)
        ids = [client.fine_tuning.jobs.create(model="tiny", training_file=train, validation_file=valid, seed=seed,
                                              method=method_body(kind, epochs)).id for _ in range(2)]
        pairs.append(Pair(kind, *ids, cancel=bool(cancel_every) and i % cancel_every == cancel_every - 1))
    return pairs


class Chaos:
    """Drive the schedule: ``kills`` SIGKILLs spread over the subjects' runs, pauses/resumes and cancels mixed in."""

    def __init__(self, client: OpenAI, data_dir: Path, pairs: list[Pair], kills: int, rng: random.Random,
                 pause_chance: float = 0.15, timeout: float = 1800):
        self.client, self.data_dir, self.pairs, self.kills, self.rng = client, data_dir, pairs, kills, rng
        self.pause_chance, self.deadline = pause_chance, time.time() + timeout
        self.moments: dict[str, int] = {}

    def status(self, job_id: str) -> str:
        return self.client.fine_tuning.jobs.retrieve(job_id).status

    def run(self) -> None:
        done = 0
        while time.time() < self.deadline:
            live = [p for p in self.pairs if self.status(p.subject) not in TERMINAL]
            if not live:
                break
            pair = self.rng.choice(live)
            status = self.status(pair.subject)
            step = _last_step(self.data_dir / "jobs" / pair.subject)
            if status == "paused":
                self.client.fine_tuning.jobs.resume(pair.subject)
            elif status == "running" and step > pair.mark:  # disrupt a job only once it has progressed since
                if pair.cancel and self.rng.random() < 0.3:
                    self.client.fine_tuning.jobs.cancel(pair.subject)
                elif self.rng.random() < self.pause_chance:
                    self.client.fine_tuning.jobs.pause(pair.subject)
                    pair.paused += 1
                elif done < self.kills and self._kill(pair):
                    done += 1
                pair.mark = _last_step(self.data_dir / "jobs" / pair.subject)
            time.sleep(self.rng.uniform(0.1, 0.6))
        self.kills_done = done
        while time.time() < self.deadline:  # the controls may still run
            if all(self.status(j) in TERMINAL for p in self.pairs for j in (p.control, p.subject)):
                return
            time.sleep(0.5)
        raise AssertionError("chaos run timed out")

    def _kill(self, pair: Pair) -> bool:
        """SIGKILL the subject's trainer at one of three kinds of moment; True if a process was killed."""
        moment = self.rng.choice(["now", "checkpoint", "validation" if pair.kind == "reinforcement" else "now"])
        job_dir = self.data_dir / "jobs" / pair.subject
        if moment == "checkpoint":  # as soon as a new checkpoint folder appears: mid-write, or just after
            folder = job_dir / "checkpoints"
            before = set(os.listdir(folder)) if folder.exists() else set()
            until = time.time() + 5
            while time.time() < until and (set(os.listdir(folder)) if folder.exists() else set()) <= before:
                time.sleep(0.005)
        elif moment == "validation":  # RFT validates every eval_interval (2) steps: kill after an odd step
            until = time.time() + 5
            while time.time() < until and _last_step(job_dir) % 2 != 1:
                time.sleep(0.01)
            time.sleep(self.rng.uniform(0, 0.3))
        killed = kill_all(trainer_pids(self.data_dir, pair.subject)) > 0
        if killed:
            pair.kills += 1
            self.moments[moment] = self.moments.get(moment, 0) + 1
        return killed


def _last_step(job_dir: Path) -> int:
    try:
        text = (job_dir / "events.jsonl").read_bytes()
    except FileNotFoundError:
        return 0
    marker = text.rfind(b'"step":')
    if marker < 0:
        return 0
    digits = text[marker + 7:marker + 14].split(b",")[0].split(b"}")[0]
    return int(digits) if digits.strip().isdigit() else 0


def judge(client: OpenAI, data_dir: Path, pair: Pair) -> list[str]:
    """What is wrong with one subject against its control (an empty list: nothing)."""
    jobs = client.fine_tuning.jobs
    control, subject = jobs.retrieve(pair.control), jobs.retrieve(pair.subject)
    problems = []
    if control.status != "succeeded":
        return [f"control {control.id} ended {control.status}: {control.error}"]
    checkpoints = jobs.checkpoints.list(subject.id, limit=100).data
    if subject.status == "cancelled":
        if not pair.cancel:
            problems.append("cancelled without a cancel")
        if checkpoints:
            problems.append(f"a cancelled job lists {len(checkpoints)} checkpoints")
        return problems
    if subject.status != "succeeded":
        return [f"ended {subject.status}: {subject.error}"]
    ours, theirs = metrics(client, subject.id), metrics(client, control.id)
    steps = [m["step"] for m in ours]
    if steps != sorted(set(steps)):
        twice = sorted({s for s in steps if steps.count(s) > 1})
        problems.append(f"steps reported twice or out of order: {twice or steps}")
    if {m["step"]: m for m in ours} != {m["step"]: m for m in theirs}:
        problems.append("per-step metrics differ from the control's")
    for attr in ("step_number", "fine_tuned_model_checkpoint", "id"):
        values = [getattr(c, attr) for c in checkpoints]
        if len(values) != len(set(values)):
            problems.append(f"a checkpoint is listed twice ({attr}: {values})")
    theirs_ckpt = {c.step_number for c in jobs.checkpoints.list(control.id, limit=100).data}
    if not theirs_ckpt <= {c.step_number for c in checkpoints}:
        problems.append(f"checkpoints {sorted(theirs_ckpt)} of the control are not all listed")
    ref, got = (load_file(data_dir / "jobs" / j / "checkpoints" / "final" / "adapter_model.safetensors")
                for j in (control.id, subject.id))
    if ref.keys() != got.keys() or any(not ref[k].equal(got[k]) for k in ref):
        problems.append("the final adapter differs from the control's")
    return problems


def rerun_steps(data_dir: Path, job_id: str) -> list[int]:
    """Steps the job's trainers reported more than once in its events file (run again after a kill); none for a job
    that never trained (cancelled while queued)."""
    log = data_dir / "jobs" / job_id / "events.jsonl"
    steps = [json.loads(line)["data"]["step"] for line in (log.open() if log.exists() else [])
             if '"kind":"metrics"' in line]
    return sorted({s for s in steps if steps.count(s) > 1})


def metrics(client: OpenAI, job_id: str) -> list[dict]:
    """The metrics events' data, oldest first, without timings (which differ from run to run)."""
    return [{k: v for k, v in e.data.items() if not k.endswith("time_s")}
            for e in all_events(client, job_id) if e.type == "metrics"]
