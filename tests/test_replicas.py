"""Several API replicas on one PostgreSQL database: every job is driven by one scheduler at a time, no attempt is
started twice, the concurrency limit holds across the cluster, no event is recorded twice, and a replica killed
with SIGKILL hands its jobs over to the survivors."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter

import pytest
import sqlalchemy

from openft import jobs
from openft import tables as t
from openft.config import Settings
from openft.executors import LocalExecutor
from openft.ids import new_id, now
from openft.scheduler import Scheduler
from openft.store import Store, migrate
from tests.conftest import BACKENDS, Server, _kill_trainers, _postgres_database
from tests.helpers import all_events, chat_rows, upload, wait_for

START = jobs.row("queued", "start")

needs_postgres = pytest.mark.skipif("postgres" not in BACKENDS, reason="needs the PostgreSQL test server")

JOBS = int(os.environ.get("OPENFT_TEST_REPLICA_JOBS", "6"))  # the full run: OPENFT_TEST_REPLICA_JOBS=20
LIMIT = 3
HP = {"n_epochs": 2, "batch_size": 2}  # 10 examples: 5 steps an epoch, 10 in all
STEPS = 10
LONG = 8  # epochs of the first jobs (40 steps): still training when the second replica is up


@pytest.fixture
def pg_url():
    with _postgres_database() as url:
        migrate(url)
        yield url


def _queued_job(org: str = "org_a") -> t.Job:
    method = {"type": "supervised", "supervised": {"hyperparameters": {}}}
    return t.Job(id=new_id("ftjob"), organization_id=org, created_at=now(), status="queued", model="tiny",
                 training_file="file-x", seed=1, method=method, hyperparameters={}, result_files=[], validated=True)


def test_a_lease_is_held_until_it_expires_or_is_released_then_another_replica_takes_the_job(database_url):
    migrate(database_url)
    store = Store(database_url)
    job = _queued_job()
    job.status = "running"
    store.add(job)
    assert [j.id for j in store.claim_leases("a", "host-1", 0.5)] == [job.id]
    assert store.claim_leases("b", "host-1", 0.5) == []  # a holds it
    assert [j.id for j in store.claim_leases("a", "host-1", 0.5)] == [job.id]  # renewed
    time.sleep(0.7)  # a stopped renewing
    assert [j.id for j in store.claim_leases("b", "host-1", 30)] == [job.id]
    assert store.claim_leases("a", "host-1", 30) == []
    store.release_leases("b")  # b stops cleanly
    assert [j.id for j in store.claim_leases("a", "host-1", 30)] == [job.id]
    store.engine.dispose()


def test_a_job_whose_attempt_only_another_host_can_observe_is_never_leased_here(database_url):
    migrate(database_url)
    store = Store(database_url)
    job = _queued_job()
    job.status = "running"
    store.add(job)
    assert store.set_worker(job.id, 0, {"executor": "local", "host": "host-2", "pid": 1, "start_time": "1"}, "host-2")
    assert store.claim_leases("a", "host-1", 30) == []
    assert [j.id for j in store.claim_leases("b", "host-2", 30)] == [job.id]
    store.engine.dispose()


def test_a_started_attempt_is_not_recorded_once_another_replica_has_re_queued_its_job(database_url):
    migrate(database_url)
    store = Store(database_url)
    store.add(_queued_job())
    job = store.claim_start("a", 30, limit=1, move=START)
    # a's lease lapsed while it started the attempt; b found the job without a handle and re-queued it.
    assert store.transition(job.id, "running", "queued", worker=None)
    assert not store.set_worker(job.id, job.attempt, {"executor": "local"}, "host-1")
    assert store.get_job(None, job.id).worker is None
    store.engine.dispose()


@needs_postgres
def test_two_replicas_racing_to_start_jobs_never_exceed_the_cluster_limit_or_take_one_job_twice(pg_url):
    setup = Store(pg_url)
    for _ in range(12):
        setup.add(_queued_job())
    stores = [Store(pg_url) for _ in range(6)]
    claimed: list[str] = []
    barrier = threading.Barrier(len(stores))

    def claim(store: Store, replica: str) -> None:
        barrier.wait()
        for _ in range(6):  # a claim that loses a race returns None: keep trying, as the next tick would
            if job := store.claim_start(replica, 30, limit=5, move=START):
                claimed.append(job.id)

    threads = [threading.Thread(target=claim, args=(s, f"replica-{i}")) for i, s in enumerate(stores)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(claimed) == 5 and len(set(claimed)) == 5
    with setup.session() as s:
        running = list(s.scalars(sqlalchemy.select(t.Job).where(t.Job.status == "running")))
    assert sorted(j.id for j in running) == sorted(claimed)
    assert all(j.attempt == 1 and j.lease_owner.startswith("replica-") for j in running)
    # Creation order: the five oldest jobs were taken.
    with setup.session() as s:
        oldest = list(s.scalars(sqlalchemy.select(t.Job.id).order_by(t.Job.seq).limit(5)))
    assert sorted(oldest) == sorted(claimed)
    for store in stores + [setup]:
        store.engine.dispose()


@needs_postgres
def test_an_organization_with_fewer_running_jobs_starts_next_even_if_its_job_is_newer(pg_url):
    store = Store(pg_url)
    busy = [_queued_job("org_busy") for _ in range(3)]
    newcomer = _queued_job("org_new")
    for job in busy + [newcomer]:
        store.add(job)
    first = store.claim_start("r", 30, limit=100, move=START)
    second = store.claim_start("r", 30, limit=100, move=START)
    assert first.organization_id == "org_busy"  # the oldest queued job overall
    assert second.id == newcomer.id  # org_new has none running; org_busy already has one
    store.engine.dispose()


@needs_postgres
def test_two_schedulers_ingesting_the_same_events_record_them_once(pg_url, tmp_path):
    store = Store(pg_url)
    job = _queued_job()
    job.status = "running"
    store.add(job)
    settings = Settings(data_dir=tmp_path)
    job_dir = settings.jobs_dir / job.id
    job_dir.mkdir(parents=True)
    lines = [{"kind": "message", "message": f"event {i}", "ts": time.time()} for i in range(5)]
    (job_dir / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    schedulers = [Scheduler(Store(pg_url), None, settings.model_copy(update={"replica_id": f"r{i}"}),
                            LocalExecutor()) for i in range(2)]
    snapshot = store.get_job(None, job.id)  # both read the job before either records anything
    for scheduler in schedulers:
        scheduler.ingest(snapshot, job_dir)
    messages = [e.message for e in store.list_events(job.id, None, 100)[0]]
    assert sorted(messages) == [f"event {i}" for i in range(5)]
    for s in schedulers:
        s.store.engine.dispose()
    store.engine.dispose()


def _rows(url: str) -> dict[str, t.Job]:
    store = Store(url)
    with store.session() as s:
        rows = {j.id: j for j in s.scalars(sqlalchemy.select(t.Job))}
    store.engine.dispose()
    return rows


def _assert_complete_unique_events(client, job_id: str, steps: int) -> None:
    events = all_events(client, job_id)
    assert len({e.id for e in events}) == len(events)
    keys = Counter((e.message, json.dumps(e.data, sort_keys=True)) for e in events)
    assert [k for k, n in keys.items() if n > 1] == []
    reported = [e.data["step"] for e in events if e.type == "metrics"]
    assert sorted(reported) == list(range(1, steps + 1))
    messages = [e.message for e in events]
    for once in ("Files validated, moving job to queued state", "Fine-tuning job started",
                 "The job has successfully completed"):
        assert messages.count(once) == 1, (once, messages)
    assert not any("exited without a result" in m or "stopped while starting" in m for m in messages)


@needs_postgres
def test_jobs_created_through_two_replicas_all_succeed_once_when_one_replica_is_killed(
        pg_url, tiny_model, tmp_path):
    data_dir = tmp_path / "data"  # one shared job folder and blob store: both replicas run on this host
    data_dir.mkdir()
    replicas = [Server(data_dir, pg_url, {"tiny": str(tiny_model)}, max_concurrent_jobs=LIMIT,
                       lease_seconds=4, replica_id=f"replica-{i}") for i in range(2)]
    try:
        # replica-0 comes up first and takes the first jobs, so that killing it surely strands running attempts
        # (with both up from the start, whichever replica ticks first may drive every job: each claims the slots
        # its own finished jobs free).
        replicas[0].start()
        jobs = [_create(replicas[0].client(), i, LONG) for i in range(LIMIT)]
        _wait_until_replica_0_drives_a_running_job(pg_url, replicas[0].client())
        replicas[1].start()
        clients = [r.client() for r in replicas]
        jobs += [_create(clients[i % 2], i) for i in range(LIMIT, JOBS)]
        survivor = clients[1]
        most_running, stranded = _wait_until_replica_0_drives_a_running_job(pg_url, survivor)
        replicas[0].stop(signal.SIGKILL)
        for job in jobs:
            wait_for(survivor, job.id, "succeeded", timeout=400)
            most_running = max(most_running, _running(survivor))
        rows = _rows(pg_url)
        assert most_running <= LIMIT
        assert {rows[j.id].attempt for j in jobs} == {1} and {rows[j.id].crashes for j in jobs} == {0}
        assert {rows[j].lease_owner for j in stranded} == {"replica-1"}  # the survivor took over replica-0's jobs
        for job in jobs:
            logs = sorted(p.name for p in (data_dir / "jobs" / job.id).glob("attempt-*.log"))
            assert logs == ["attempt-1.log"]
            _assert_complete_unique_events(survivor, job.id, job.hyperparameters.n_epochs * STEPS // 2)
    finally:
        for r in replicas:
            r.stop(signal.SIGKILL)
        _kill_trainers(data_dir)


def _create(client, i: int, epochs: int = HP["n_epochs"]):
    train = upload(client, chat_rows(10, offset=i))
    return client.fine_tuning.jobs.create(model="tiny", training_file=train, seed=7,
                                          hyperparameters={**HP, "n_epochs": epochs})


def _running(client) -> int:
    return sum(1 for j in client.fine_tuning.jobs.list(limit=100).data if j.status in ("running", "pausing"))


def _wait_until_replica_0_drives_a_running_job(url: str, client, timeout: float = 180) -> tuple[int, list[str]]:
    """Wait until replica-0 holds the lease of a job whose attempt is training (so killing it strands a live
    attempt); returns the most jobs seen running meanwhile, and the jobs replica-0 drives."""
    deadline, most = time.time() + timeout, 0
    while time.time() < deadline:
        most = max(most, _running(client))
        rows = _rows(url).values()
        if any(j.lease_owner == "replica-0" and j.status == "running" and j.events_offset > 0 for j in rows):
            return most, [j.id for j in rows if j.lease_owner == "replica-0" and j.status in ("running", "pausing")]
        time.sleep(0.2)
    raise AssertionError("replica-0 never drove a running job")
