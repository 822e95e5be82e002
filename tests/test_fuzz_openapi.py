"""The published API, fuzzed: schemathesis generates valid and invalid requests for every operation in the real
server's /openapi.json (both prefixes, authenticated with a real API key) and checks each answer: never a 5xx,
status codes, content types, headers and bodies as the document says, invalid input refused, a 405 with Allow
for a method a path does not serve, and every error in OpenAI's envelope. Bounded: a few deterministic examples
per operation (``bench/fuzz.py`` runs the same at full size)."""

from __future__ import annotations

import httpx

from openft import jobs
from tests import fuzzing
from tests.helpers import chat_rows, upload


def test_every_operation_answers_as_its_published_schema_says_and_never_with_a_5xx(make_server, tmp_path):
    server = make_server(enable_scheduler="false")  # jobs stay where the fuzzer puts them: nothing trains
    key = server.cli("keys", "create", "--org", "acme")
    server.start()
    document = httpx.get(server.url + "/openapi.json").json()
    assert {p.split("/")[1] for p in document["paths"]} == {"v1", "api"}
    client = server.client(api_key=key)
    file_id = upload(client, chat_rows(4))
    job_id = client.fine_tuning.jobs.create(model="tiny", training_file=file_id).id
    upload_id = client.uploads.create(bytes=10, filename="a.jsonl", mime_type="application/jsonl",
                                      purpose="fine-tune").id

    result = fuzzing.run(server.url, key, tmp_path, max_examples=2, phases="examples,coverage,fuzzing",
                         objects={"file_id": file_id, "job_id": job_id, "upload_id": upload_id})

    assert result.cases > 1000, result.output[-3000:]  # every operation of both prefixes, many times over
    assert result.server_errors == 0, "\n".join(result.failures[:20]) + result.output[-3000:]
    assert result.violations == 0, "\n".join(result.failures[:20]) + result.output[-3000:]


def test_the_document_names_every_error_in_openai_envelope_and_every_job_status(server):
    document = httpx.get(server.url + "/openapi.json").json()
    operations = [op for ops in document["paths"].values() for op in ops.values()]
    envelope = {"$ref": "#/components/schemas/ErrorResponse"}
    for op in operations:
        for status in ("400", "401", "404", "409", "413", "429", "507"):
            assert op["responses"][status]["content"]["application/json"]["schema"] == envelope, op["operationId"]
        assert "422" not in op["responses"]  # the service answers an invalid request with a 400, never a 422
    export = document["paths"]["/v1/models/{model}/export"]["get"]["responses"]["403"]
    assert export["content"]["application/json"]["schema"] == envelope
    job_status = document["components"]["schemas"]["FineTuningJob"]["properties"]["status"]["enum"]
    assert set(job_status) == set(jobs.STATUSES)  # pausing and paused included
    chat = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert chat["schema"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    assert {"model", "messages"} <= set(document["components"]["schemas"]["ChatCompletionRequest"]["required"])


def test_a_method_a_path_does_not_serve_is_a_405_with_every_method_it_does_serve_in_allow(server):
    for prefix in ("/v1", "/api/v1/llm"):
        answer = httpx.put(f"{server.url}{prefix}/files")
        assert answer.status_code == 405
        assert {"GET", "POST"} <= {m.strip() for m in answer.headers["allow"].split(",")}
        assert answer.json()["error"]["type"] == "invalid_request_error"
    answer = httpx.patch(f"{server.url}/v1/fine_tuning/jobs/ftjob-x/cancel")
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"


def test_a_chat_message_whose_role_is_an_object_is_a_400_naming_the_role(server):
    body = {"model": "tiny", "messages": [{"role": {"name": "user"}, "content": "hi"}]}
    answer = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "messages[0].role"


def test_a_nul_character_in_a_path_query_or_json_body_is_a_400_on_every_database(server):
    # PostgreSQL cannot store NUL in text: these were 500s there before the request guard refused them.
    answers = [
        httpx.get(server.url + "/v1/files/file-a%00b"),
        httpx.get(server.url + "/v1/fine_tuning/jobs?after=x%00"),
        httpx.get(server.url + "/api/v1/llm/models/x%00y"),
        httpx.post(server.url + "/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": "file-\u0000"}),
        httpx.post(server.url + "/v1/webhook_endpoints", json={"url": "https://example.com/\u0000"}),
    ]
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "nul_character"
    # an escaped backslash before "u0000" is text, not a NUL: the request reaches the route (an unknown file)
    answer = httpx.post(server.url + "/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": "f\\u0000"})
    assert answer.json()["error"]["code"] == "file_not_found", answer.text
