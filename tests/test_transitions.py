"""Every (status, action) pair against the one transition table, on a real database, and the race between
concurrent pause / cancel requests (compare-and-set keeps the job consistent)."""

from __future__ import annotations

import threading

import httpx
import pytest

from openft import jobs
from openft import tables as t
from openft.errors import Conflict
from openft.ids import new_id, now
from openft.store import Scope, Store, migrate

SCOPE = Scope(org="org_a")
USER_ACTIONS = ["pause", "resume", "cancel"]


@pytest.fixture
def store(database_url):
    migrate(database_url)
    store = Store(database_url)
    yield store
    store.engine.dispose()


def _job(store: Store, status: str, validated: bool = True) -> str:
    job = t.Job(
        id=new_id("ftjob"), organization_id=SCOPE.org, created_at=now(), status=status, model="tiny",
        training_file="file_x", seed=1, method={"type": "supervised"}, hyperparameters={}, result_files=[],
        validated=validated,
    )
    store.add(job)
    return job.id


@pytest.mark.parametrize("status", jobs.STATUSES)
@pytest.mark.parametrize("action", USER_ACTIONS)
def test_user_action_follows_the_transition_table(store, status, action):
    job_id = _job(store, status)
    expected = jobs.TRANSITIONS.get((status, action))
    if expected is None:
        with pytest.raises(Conflict) as err:
            jobs.act(store, SCOPE, job_id, action)
        assert err.value.status == 409 and err.value.headers["x-should-retry"] == "false"
        assert err.value.code == "invalid_job_status" and status in err.value.message
        assert store.get_job(SCOPE, job_id).status == status
    else:
        assert jobs.act(store, SCOPE, job_id, action).status == expected


def test_resume_of_a_job_paused_before_validation_validates_its_files_first(store):
    job_id = _job(store, "paused", validated=False)
    assert jobs.act(store, SCOPE, job_id, "resume").status == "validating_files"


def test_every_pair_of_the_table_names_known_statuses():
    for (status, _action), to in jobs.TRANSITIONS.items():
        assert status in jobs.STATUSES and to in jobs.STATUSES
    terminal_moves = [(s, a) for (s, a), to in jobs.TRANSITIONS.items() if s in jobs.TERMINAL and to != s]
    assert terminal_moves == []  # nothing leaves a terminal status


def test_racing_pause_and_cancel_leave_the_job_cancelled_with_one_status_write_each(store):
    job_id = _job(store, "running")
    barrier = threading.Barrier(8)
    outcomes = []

    def hit(action):
        barrier.wait()
        try:
            outcomes.append(jobs.act(store, SCOPE, job_id, action).status)
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=hit, args=(a,)) for a in ["pause", "cancel"] * 4]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.get_job(SCOPE, job_id).status == "cancelled"
    assert set(outcomes) <= {"pausing", "cancelled", "conflict"}
    rows, _ = store.list_events(job_id, None, 100)
    assert [e.message for e in rows].count("Job cancelled") == 1


def test_conflicting_request_is_a_409_that_the_sdk_does_not_retry(make_server):
    server = make_server(enable_scheduler="false").start()
    client = server.client(max_retries=2)
    from tests.helpers import chat_rows, upload

    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, chat_rows(12)))
    seen = []
    hooks = {"request": [lambda request: seen.append(request.url.path)]}
    client = server.client(max_retries=2, http_client=httpx.Client(event_hooks=hooks))
    import openai

    with pytest.raises(openai.ConflictError) as err:
        client.fine_tuning.jobs.resume(job.id)
    assert err.value.code == "invalid_job_status" and len(seen) == 1
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"  # idempotent
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # idempotent
