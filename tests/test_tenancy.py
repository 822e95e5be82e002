"""Auth and tenancy: keys map to organizations, other organizations' ids are 404, no key is 401,
X-On-Behalf-Of scopes resources to an end user."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers import chat_rows, upload


@pytest.fixture
def orgs(make_server):
    server = make_server(enable_scheduler="false")
    keys = {org: server.cli("keys", "create", "--org", org) for org in ("acme", "globex")}
    server.start()
    return server, keys


def test_every_endpoint_answers_404_for_another_organizations_ids(orgs):
    server, keys = orgs
    acme, globex = server.client(api_key=keys["acme"]), server.client(api_key=keys["globex"])
    file_id = upload(acme, chat_rows(12))
    job = acme.fine_tuning.jobs.create(model="tiny", training_file=file_id)
    assert job.organization_id == "acme"
    calls = [
        lambda: globex.files.retrieve(file_id),
        lambda: globex.files.content(file_id),
        lambda: globex.files.delete(file_id),
        lambda: globex.fine_tuning.jobs.retrieve(job.id),
        lambda: globex.fine_tuning.jobs.cancel(job.id),
        lambda: globex.fine_tuning.jobs.pause(job.id),
        lambda: globex.fine_tuning.jobs.resume(job.id),
        lambda: globex.fine_tuning.jobs.list_events(job.id),
        lambda: globex.fine_tuning.jobs.checkpoints.list(job.id),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    assert globex.files.list().data == [] and globex.fine_tuning.jobs.list().data == []
    with pytest.raises(openai.BadRequestError) as err:  # another org's file cannot be trained on either
        globex.fine_tuning.jobs.create(model="tiny", training_file=file_id)
    assert err.value.param == "training_file"
    assert acme.fine_tuning.jobs.retrieve(job.id).status == "validating_files"


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1/llm"])
def test_missing_or_wrong_key_is_401_in_the_error_envelope(orgs, prefix):
    server, _ = orgs
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        r = httpx.get(server.url + prefix + "/fine_tuning/jobs", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["x-request-id"]
    with pytest.raises(openai.AuthenticationError):
        server.client(prefix, api_key="sk-wrong").models.list()


def test_on_behalf_of_scopes_resources_to_one_end_user(orgs):
    server, keys = orgs
    alice = server.client(api_key=keys["acme"], default_headers={"X-On-Behalf-Of": "alice"})
    bob = server.client(api_key=keys["acme"], default_headers={"X-On-Behalf-Of": "bob"})
    backend = server.client(api_key=keys["acme"])
    file_id = upload(alice, chat_rows(12))
    job = alice.fine_tuning.jobs.create(model="tiny", training_file=file_id)
    with pytest.raises(openai.NotFoundError):
        bob.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.BadRequestError):
        bob.fine_tuning.jobs.create(model="tiny", training_file=file_id)
    assert [j.id for j in backend.fine_tuning.jobs.list()] == [job.id]  # the organization sees everything
    r = httpx.get(server.url + "/v1/files", headers={"Authorization": f"Bearer {keys['acme']}", "X-On-Behalf-Of": ""})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-On-Behalf-Of"


def test_server_refuses_a_public_address_without_keys(make_server):
    server = make_server()
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "openft.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
                         env=server.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "without API keys" in out.stderr
