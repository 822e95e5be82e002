"""Fine-tuned models as resources: listing, retrieval and deletion, and sharing with another organization through
checkpoint permissions (official openai SDK as the client; a real tiny job trained once per backend)."""

from __future__ import annotations

import signal

import openai
import pytest

from tests.conftest import BACKENDS, Server, _kill_trainers
from tests.helpers import chat_rows, upload, wait_for


@pytest.fixture(scope="module", params=BACKENDS)
def trained(request, tmp_path_factory, tiny_model):
    """A server with three organizations and one fine-tuned model of acme's (with an epoch checkpoint)."""
    data_dir = tmp_path_factory.mktemp("sharing")
    if request.param == "postgres":
        url = request.getfixturevalue("module_postgres_url")
    else:
        url = f"sqlite:///{data_dir / 'openft.db'}"
    server = Server(data_dir, url, {"tiny": str(tiny_model)})
    keys = {org: server.cli("keys", "create", "--org", org) for org in ("acme", "globex", "initech")}
    server.start()
    acme = server.client(api_key=keys["acme"])
    job = acme.fine_tuning.jobs.create(model="tiny", training_file=upload(acme, chat_rows(8) + chat_rows(4)),
                                       hyperparameters={"n_epochs": 2, "batch_size": 4}, suffix="shared", seed=3)
    job = wait_for(acme, job.id, "succeeded")
    clients = {org: server.client(api_key=key) for org, key in keys.items()}
    yield server, clients, job
    server.stop(signal.SIGKILL)
    _kill_trainers(data_dir)


def test_models_list_and_retrieve_show_the_organizations_own_models(trained):
    _, c, job = trained
    checkpoints = c["acme"].fine_tuning.jobs.checkpoints.list(job.id).data
    names = {m.id for m in c["acme"].models.list()}
    assert {"tiny", job.fine_tuned_model} | {ck.fine_tuned_model_checkpoint for ck in checkpoints} <= names
    assert c["acme"].models.retrieve(job.fine_tuned_model).owned_by == "acme"
    assert {m.id for m in c["globex"].models.list()} == {"tiny"}
    with pytest.raises(openai.NotFoundError) as err:
        c["globex"].models.retrieve(job.fine_tuned_model)
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):  # base models cannot be deleted
        c["acme"].models.delete("tiny")


def test_sharing_a_checkpoint_with_another_organization(trained):
    _, c, job = trained
    checkpoint = c["acme"].fine_tuning.jobs.checkpoints.list(job.id).data[-1].fine_tuned_model_checkpoint
    assert checkpoint.endswith(":ckpt-step-3")
    perms = c["acme"].fine_tuning.checkpoints.permissions
    created = perms.create(checkpoint, project_ids=["globex", "globex", "umbrella"])
    assert [p.project_id for p in created.data] == ["globex", "umbrella"]
    assert all(p.id.startswith("cp_") and p.object == "checkpoint.permission" for p in created.data)
    assert perms.create(checkpoint, project_ids=["globex"]).data == []  # already shared: nothing new

    first = perms.list(checkpoint, order="ascending", limit=1)
    assert [p.project_id for p in first.data] == ["globex"] and first.has_more and first.last_id
    # The SDK pages on last_id: iterating walks every page.
    assert [p.project_id for p in perms.list(checkpoint, order="ascending", limit=1)] == ["globex", "umbrella"]
    assert [p.project_id for p in perms.list(checkpoint)] == ["umbrella", "globex"]  # newest first by default
    assert [p.project_id for p in perms.list(checkpoint, project_id="umbrella").data] == ["umbrella"]

    # The grantee sees and may use the model; a third organization may not, nor manage its permissions.
    assert c["globex"].models.retrieve(checkpoint).owned_by == "acme"
    assert checkpoint in {m.id for m in c["globex"].models.list()}
    for org in ("initech",):
        with pytest.raises(openai.NotFoundError):
            c[org].models.retrieve(checkpoint)
    for org in ("globex", "initech"):
        with pytest.raises(openai.NotFoundError):
            c[org].fine_tuning.checkpoints.permissions.list(checkpoint)
        with pytest.raises(openai.NotFoundError):
            c[org].fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[org])

    # Revoking takes the model away from the grantee again.
    globex_perm = next(p for p in created.data if p.project_id == "globex")
    deleted = perms.delete(globex_perm.id, fine_tuned_model_checkpoint=checkpoint)
    assert deleted.deleted and deleted.id == globex_perm.id
    with pytest.raises(openai.NotFoundError):
        perms.delete(globex_perm.id, fine_tuned_model_checkpoint=checkpoint)
    with pytest.raises(openai.NotFoundError):
        c["globex"].models.retrieve(checkpoint)


def test_bad_project_ids_are_a_400_naming_the_field(trained):
    _, c, job = trained
    with pytest.raises(openai.BadRequestError) as err:
        c["acme"].fine_tuning.checkpoints.permissions.create(job.fine_tuned_model, project_ids=["ok", "not ok!"])
    assert err.value.param == "project_ids[1]"


def test_deleting_a_fine_tuned_model_removes_its_listing_and_weights(trained):
    server, c, job = trained
    checkpoints = c["acme"].fine_tuning.jobs.checkpoints.list(job.id).data
    epoch = next(ck for ck in checkpoints if ck.fine_tuned_model_checkpoint != job.fine_tuned_model)
    c["acme"].fine_tuning.checkpoints.permissions.create(epoch.fine_tuned_model_checkpoint, project_ids=["globex"])
    folder = server.data_dir / "jobs" / job.id / "checkpoints" / f"checkpoint-{epoch.step_number}"
    assert folder.is_dir()
    with pytest.raises(openai.NotFoundError):  # only its owner may delete it
        c["globex"].models.delete(epoch.fine_tuned_model_checkpoint)
    result = c["acme"].models.delete(epoch.fine_tuned_model_checkpoint)
    assert result.deleted and result.id == epoch.fine_tuned_model_checkpoint
    assert not folder.exists()
    assert epoch.fine_tuned_model_checkpoint not in {m.id for m in c["acme"].models.list()}
    assert epoch.fine_tuned_model_checkpoint not in {m.id for m in c["globex"].models.list()}
    with pytest.raises(openai.NotFoundError):
        c["acme"].models.retrieve(epoch.fine_tuned_model_checkpoint)


def test_a_grantees_model_survives_a_revoked_share_and_the_owner_deleting_the_shared_model(trained):
    server, c, job = trained
    perms = c["acme"].fine_tuning.checkpoints.permissions
    granted = perms.create(job.fine_tuned_model, project_ids=["initech"]).data[0]
    derived = c["initech"].fine_tuning.jobs.create(
        model=job.fine_tuned_model, training_file=upload(c["initech"], chat_rows(10)), seed=2,
        hyperparameters={"n_epochs": 1, "batch_size": 5}, suffix="derived")
    derived = wait_for(c["initech"], derived.id, "succeeded").fine_tuned_model
    parent_weights = server.data_dir / "jobs" / job.id / "checkpoints" / "final"

    perms.delete(granted.id, fine_tuned_model_checkpoint=job.fine_tuned_model)
    # The owner may delete its model whatever another organization trained on it (no 409 naming their job).
    assert c["acme"].models.delete(job.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        c["acme"].models.retrieve(job.fine_tuned_model)
    assert parent_weights.is_dir()  # still needed by initech's model
    assert derived in {m.id for m in c["initech"].models.list()}
    assert c["initech"].models.retrieve(derived).owned_by == "initech"
    reply = c["initech"].chat.completions.create(model=derived, max_tokens=3,
                                                 messages=[{"role": "user", "content": "What is item number 1?"}])
    assert reply.choices[0].message.content
    c["initech"].models.delete(derived)
    assert not parent_weights.exists()
