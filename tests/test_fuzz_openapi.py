"""The published API, fuzzed: schemathesis generates valid and invalid requests for every operation in the real
server's /openapi.json (both prefixes, authenticated with a real API key) and checks each answer: never a 5xx,
status codes, content types, headers and bodies as the document says, invalid input refused, a 405 with Allow
for a method a path does not serve, and every error in OpenAI's envelope. Bounded: a few deterministic examples
per operation (``bench/fuzz.py`` runs the same at full size)."""

from __future__ import annotations

import httpx

from tests import fuzzing


def test_every_operation_answers_as_its_published_schema_says_and_never_with_a_5xx(make_server, tmp_path):
    server = make_server(enable_scheduler="false")
    key = server.cli("keys", "create", "--org", "acme")
    server.start()
    document = httpx.get(server.url + "/openapi.json").json()
    assert {p.split("/")[1] for p in document["paths"]} == {"v1", "api"}

    result = fuzzing.run(server.url, key, tmp_path, max_examples=2, phases="examples,coverage,fuzzing")

    assert result.cases > 200, result.output[-3000:]  # every operation of both prefixes was exercised
    assert result.server_errors == 0, "\n".join(result.failures[:20]) + result.output[-3000:]
    assert result.violations == 0, "\n".join(result.failures[:20]) + result.output[-3000:]
