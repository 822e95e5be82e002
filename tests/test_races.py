"""Racing controls: several clients (threads, the official openai SDK, the real server) pause, resume, cancel and
create jobs and delete models in seeded random interleavings while the jobs train. Every answer must be the one the
transition table gives for some status the job had while the request was in flight (a 409 `invalid_job_status`
exactly where the table has no row), and afterwards no job may be left in a status that nothing drives: resuming
the paused ones, every job ends succeeded or cancelled."""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter

import openai
import pytest

from openft import jobs
from tests.helpers import chat_rows, upload, wait_for

OPS_PER_BACKEND = 100
CLIENTS = 4
MAX_JOBS, MAX_LIVE = 12, 4  # jobs created in all, and at once not yet finished
HP = {"n_epochs": 1, "batch_size": 1}  # 12 short steps: a pause lands before, during or after training
ALIASES = {"resume": ("resume", "revalidate")}  # a job paused before validation resumes by validating again


def _reach(status: str) -> set[str]:
    """Every status a job in `status` can get to by rows of the table (itself included)."""
    seen, todo = {status}, [status]
    while todo:
        here = todo.pop()
        for (frm, _action), to in jobs.TRANSITIONS.items():
            if frm == here and to not in seen:
                seen.add(to)
                todo.append(to)
    return seen


def _between(before: str, after: str) -> set[str]:
    """The statuses a job read as `before` and then as `after` can have had in between."""
    return {s for s in _reach(before) if after in _reach(s)}


def check_answer(action: str, before: str, after: str, answer: str | None, conflict_status: str | None) -> None:
    """`answer`: the status a 200 returned; `conflict_status`: the status a 409 named. One of them is None."""
    possible = _between(before, after)
    rows = [jobs.TRANSITIONS.get((s, a)) for s in possible for a in ALIASES.get(action, (action,))]
    if answer is not None:  # the job may have moved on between the write and the read that answered
        assert any(to is not None and answer in _reach(to) for to in rows), (action, before, after, answer)
        if action == "cancel":
            assert answer == "cancelled"
    else:
        assert conflict_status in possible, (action, before, after, conflict_status)
        assert all((conflict_status, a) not in jobs.TRANSITIONS for a in ALIASES.get(action, (action,)))


class Race:
    """The shared state of one run: the jobs created, the models being deleted, and what each request got."""

    def __init__(self, server, training_file: str):
        self.server, self.training_file = server, training_file
        self.lock = threading.Lock()
        self.jobs: list[str] = []
        self.created = 0  # jobs created or being created, at most MAX_JOBS
        self.deleting: set[str] = set()
        self.outcomes: Counter = Counter()
        self.errors: list[str] = []

    def run_client(self, seed: int, n_ops: int) -> None:
        client, rng = self.server.client(timeout=60), random.Random(seed)
        for _ in range(n_ops):
            op = rng.choices(["pause", "resume", "cancel", "create", "delete"], [2, 3, 1, 2, 1])[0]
            try:
                if op == "create" or not self.jobs:
                    self.create(client, rng)
                elif op == "delete":
                    self.delete_model(client, rng)
                else:  # mostly a job the action may apply to (resume: a paused one); now and then any job
                    live = self._live(client, {"paused"} if op == "resume" else None)
                    self.control(client, op, rng.choice(live if live and rng.random() < 0.8 else self.jobs))
            except Exception as err:  # a wrong answer, or any other error (a 500, a timeout): all are findings
                with self.lock:
                    self.errors.append(f"{op}: {err!r}")
            time.sleep(rng.uniform(0, 0.3))

    def control(self, client, action: str, job_id: str) -> None:
        before = client.fine_tuning.jobs.retrieve(job_id).status
        answer = conflict = None
        try:
            answer = getattr(client.fine_tuning.jobs, action)(job_id).status
        except openai.ConflictError as err:
            assert err.code == "invalid_job_status", err.message
            conflict = re.search(r"its status is (\w+)", err.message).group(1)
        after = client.fine_tuning.jobs.retrieve(job_id).status
        check_answer(action, before, after, answer, conflict)
        self.count(action, "200" if answer else "409")

    def create(self, client, rng: random.Random) -> None:
        live = len(self._live(client))
        with self.lock:
            full = self.created >= MAX_JOBS or live >= MAX_LIVE
            self.created += 0 if full else 1
        if full:
            return self.count("create", "skipped")
        models = [m for m in self._fine_tuned(client) if rng.random() < 0.5]
        model = models[0] if models else "tiny"
        try:
            job = client.fine_tuning.jobs.create(model=model, training_file=self.training_file, seed=1,
                                                 method={"type": "supervised",
                                                         "supervised": {"hyperparameters": HP}})
        except openai.BadRequestError as err:  # only a model deleted meanwhile may be refused
            assert err.code == "model_not_available" and model in self.deleting, err.message
            with self.lock:
                self.created -= 1
            return self.count("create", "400")
        assert job.status in _reach("validating_files")  # the scheduler may validate it before the answer
        with self.lock:
            self.jobs.append(job.id)
        self.count("create", "200")

    def delete_model(self, client, rng: random.Random) -> None:
        models = self._fine_tuned(client)
        if not models:
            return self.count("delete", "skipped")
        model = rng.choice(models)
        with self.lock:
            self.deleting.add(model)
        try:
            assert client.models.delete(model).deleted is True
            self.count("delete", "200")
        except openai.NotFoundError:  # another client deleted it first
            self.count("delete", "404")

    def _live(self, client, statuses: set[str] | None = None) -> list[str]:
        """The jobs not finished (or, given ``statuses``, those in one of them) as listed now."""
        return [j.id for j in client.fine_tuning.jobs.list(limit=100)
                if (j.status in statuses if statuses else j.status not in jobs.TERMINAL)]

    def _fine_tuned(self, client) -> list[str]:
        return [m.id for m in client.models.list() if m.id.startswith("ft:")]

    def count(self, op: str, outcome: str) -> None:
        with self.lock:
            self.outcomes[op, outcome] += 1


def _drive_to_the_end(client, job_ids: list[str], timeout: float = 150) -> dict[str, str]:
    """Resume what is paused and wait: every job must reach a terminal status on its own."""
    deadline, final = time.time() + timeout, {}
    while time.time() < deadline and len(final) < len(job_ids):
        for job_id in job_ids:
            job = client.fine_tuning.jobs.retrieve(job_id)
            if job.status in jobs.TERMINAL:
                final[job_id] = job.status if job.status != "failed" else f"failed: {job.error}"
            elif job.status == "paused":
                client.fine_tuning.jobs.resume(job_id)
        time.sleep(0.2)
    return {j: final.get(j) or client.fine_tuning.jobs.retrieve(j).status for j in job_ids}


def test_racing_clients_get_answers_per_the_table_and_leave_no_job_stranded(make_server, database_url):
    server = make_server(max_concurrent_jobs=2, cancel_grace_seconds=2).start()
    client = server.client()
    race = Race(server, upload(client, chat_rows(12)))
    for _ in range(2):  # fine-tuned models to train on and to delete while the clients race
        race.create(client, random.Random(0))
    for job_id in race.jobs:
        wait_for(client, job_id, "succeeded")
    seed = 1300 + (0 if database_url.startswith("sqlite") else 1)
    threads = [threading.Thread(target=race.run_client, args=(seed * 10 + i, OPS_PER_BACKEND // CLIENTS))
               for i in range(CLIENTS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert race.errors == []
    assert sum(race.outcomes.values()) == OPS_PER_BACKEND + 2
    answered = {o: sum(n for (op, got), n in race.outcomes.items() if op in ("pause", "resume", "cancel") and got == o)
                for o in ("200", "409")}
    assert answered["200"] >= 10 and answered["409"] >= 10, race.outcomes  # both sides of the table were met
    final = _drive_to_the_end(client, race.jobs)
    assert {j: s for j, s in final.items() if s not in ("succeeded", "cancelled")} == {}


@pytest.mark.parametrize(("action", "before", "after", "answer", "conflict", "ok"), [
    ("pause", "running", "pausing", "pausing", None, True),
    ("pause", "queued", "running", "running", None, True),  # paused, resumed by another client, started
    ("pause", "succeeded", "succeeded", None, "succeeded", True),
    ("pause", "running", "running", None, "running", False),  # the table pauses a running job
    ("resume", "running", "succeeded", None, "succeeded", True),
    ("resume", "paused", "paused", None, "paused", False),
    ("cancel", "running", "succeeded", "succeeded", None, False),  # a 200 cancel answers cancelled
    ("cancel", "running", "cancelled", "cancelled", None, True),
])
def test_the_answer_check_accepts_exactly_what_the_table_allows(action, before, after, answer, conflict, ok):
    if ok:
        check_answer(action, before, after, answer, conflict)
    else:
        with pytest.raises(AssertionError):
            check_answer(action, before, after, answer, conflict)
