"""Every hyperparameter error is a 400 whose ``param`` is the request field's path (never a label of the validation
library), for a value of the wrong type and for one out of range, for each method and the deprecated top level."""

from __future__ import annotations

import signal

import httpx
import pytest

from tests.conftest import Server, _kill_trainers
from tests.helpers import FUZZY_GRADER, chat_rows, upload

INTS = {"batch_size": 0, "n_epochs": 51}
FLOATS = {"learning_rate_multiplier": -1.0}
METHOD_FIELDS = {
    "supervised": {**INTS, **FLOATS},
    "dpo": {**INTS, **FLOATS, "beta": 3.0},
    "reinforcement": {**INTS, **FLOATS, "compute_multiplier": 11.0, "eval_interval": 0, "eval_samples": 65,
                      "reasoning_effort": "extreme"},
}
CASES = [(kind, name, bad) for kind, fields in METHOD_FIELDS.items() for name, bad in fields.items()]


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_model):
    data_dir = tmp_path_factory.mktemp("hp")
    server = Server(data_dir, f"sqlite:///{data_dir / 'openft.db'}", {"tiny": str(tiny_model)},
                    enable_scheduler=False).start()
    file_id = upload(server.client(), chat_rows(10))
    yield server, file_id
    server.stop(signal.SIGKILL)
    _kill_trainers(data_dir)


def _create(api, body: dict) -> dict:
    server, file_id = api
    response = httpx.post(server.url + "/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id, **body})
    assert response.status_code == 400, response.text
    return response.json()["error"]


def _method(kind: str, hyperparameters: dict) -> dict:
    section = {"hyperparameters": hyperparameters}
    if kind == "reinforcement":
        section["grader"] = FUZZY_GRADER
    return {"method": {"type": kind, kind: section}}


@pytest.mark.parametrize(("kind", "name", "out_of_range"), CASES, ids=[f"{k}-{n}" for k, n, _ in CASES])
def test_a_bad_hyperparameter_names_its_request_path_as_param(api, kind, name, out_of_range):
    path = f"method.{kind}.hyperparameters.{name}"
    for bad in ("big", [1], out_of_range):
        error = _create(api, _method(kind, {name: bad}))
        assert error["param"] == path, (bad, error)
        assert error["type"] == "invalid_request_error" and path in error["message"], error


@pytest.mark.parametrize("name", ["batch_size", "n_epochs", "learning_rate_multiplier"])
def test_a_bad_deprecated_top_level_hyperparameter_names_its_path(api, name):
    for bad in ("big", True, {**INTS, **FLOATS}[name]):
        assert _create(api, {"hyperparameters": {name: bad}})["param"] == f"hyperparameters.{name}"
