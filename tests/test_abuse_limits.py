"""Abuse limits against the real service: one organization's graders cannot freeze the API (bounded per
organization, a 429 with Retry-After past the queue, /health and other organizations answered meanwhile), bodies
are refused before they are read (no key: 401; too large: 413, also while streaming; too deep: 400), and 1,000
concurrent requests get no 5xx."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import httpx
import pytest

from tests.conftest import Server
from tests.helpers import chat_rows, jsonl, upload

SLEEPY = {"type": "python", "name": "sleepy",
          "source": "import time\ndef grade(sample, item):\n    time.sleep(3)\n    return 1.0\n"}
QUICK = {"type": "string_check", "name": "quick", "input": "{{sample.output_text}}", "reference": "yes",
         "operation": "eq"}


@pytest.fixture(scope="module")
def orgs(tmp_path_factory, tiny_model):
    """One server for the module (the limits do not depend on the database): two organizations, small limits."""
    data_dir = tmp_path_factory.mktemp("limits")
    server = Server(data_dir, f"sqlite:///{data_dir / 'openft.db'}", {"tiny": str(tiny_model)},
                    enable_scheduler="false", grader_concurrency=5, grader_concurrency_per_org=4,
                    grader_queue_per_org=4, max_file_bytes=1 << 20, max_request_bytes=256 << 10)
    keys = {org: server.cli("keys", "create", "--org", org) for org in ("acme", "globex")}
    server.start()
    yield server, {org: {"Authorization": f"Bearer {key}"} for org, key in keys.items()}
    server.stop(signal.SIGKILL)


def test_one_organizations_slow_graders_leave_health_and_other_organizations_responsive(orgs):
    server, auth = orgs
    file_id = upload(server.client(api_key=auth["globex"]["Authorization"][7:]), chat_rows(12))

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     limits=httpx.Limits(max_connections=200)) as http:
            run = "/v1/fine_tuning/alpha/graders/run"
            graders = [asyncio.create_task(http.post(run, headers=auth["acme"],
                                                     json={"grader": SLEEPY, "model_sample": "x"}))
                       for _ in range(44)]
            await asyncio.sleep(1.0)  # the graders are admitted, running or queued
            health = await http.get("/health")
            other = await http.get(f"/v1/files/{file_id}", headers=auth["globex"])
            other_grader = await http.post(run, headers=auth["globex"], json={"grader": QUICK, "model_sample": "yes"})
            pending_meanwhile = sum(not g.done() for g in graders)
            return health, other, other_grader, pending_meanwhile, await asyncio.gather(*graders)

    health, other, other_grader, pending, answers = asyncio.run(scenario())
    assert health.status_code == 200 and other.status_code == 200 and other.json()["id"] == file_id
    assert other_grader.status_code == 200 and other_grader.json()["reward"] == 1.0
    assert pending > 0  # all of that was answered while acme's graders were still running
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 429}, statuses
    assert 8 <= statuses.count(200) < 44  # 4 running + 4 queued at a time; the rest turned away at once
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.json()["error"]["type"] == "requests" and int(refused.headers["retry-after"]) > 0
    assert all(a.json()["reward"] == 1.0 for a in answers if a.status_code == 200)


def _raw_request(server, head: str, body: bytes = b"") -> tuple[int, float]:
    """Send a request head (and maybe part of its body) on a raw socket; the status line and how long it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        status = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(status.split()[1]), time.monotonic() - started


def test_a_huge_body_without_a_key_is_401_before_a_byte_of_it_is_read(orgs):
    server, auth = orgs
    for path, kind in (("/v1/files", "multipart/form-data; boundary=x"), ("/v1/chat/completions", "application/json")):
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\nContent-Length: 200000000\r\n")
        status, _ = _raw_request(server, head)  # nothing of the 200 MB follows: the answer cannot wait for it
        assert status == 401
        status, _ = _raw_request(server, head + f"Authorization: {auth['acme']['Authorization']}\r\n")
        assert status == 413  # with a key, the declared length alone is refused


def test_an_upload_past_the_limit_is_cut_off_while_streaming_and_never_stored(orgs):
    server, auth = orgs

    def chunks():  # chunked transfer: no Content-Length to refuse up front
        yield b"--x\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n\r\n"
        for _ in range(40):  # 40 MB against a limit of 1 MB
            yield jsonl(chat_rows(1)) * 3000 + b" " * ((1 << 20) - len(jsonl(chat_rows(1)) * 3000))
        yield b"\r\n--x--\r\n"

    r = httpx.post(server.url + "/v1/files", content=chunks(), timeout=60,
                   headers={**auth["acme"], "Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    listed = {f["filename"] for f in httpx.get(server.url + "/v1/files", headers=auth["acme"]).json()["data"]}
    assert "big.jsonl" not in listed
    stored = sum(p.stat().st_size for p in (server.data_dir / "blobs").rglob("*") if p.is_file())
    assert stored < 1 << 20  # the 40 MB never reached the blob store
    small = httpx.post(server.url + "/v1/files", headers=auth["acme"], data={"purpose": "fine-tune"},
                       files={"file": ("ok.jsonl", jsonl(chat_rows(12)))})
    assert small.status_code == 200


def test_json_bodies_have_a_size_and_a_nesting_limit(orgs):
    server, auth = orgs
    chat = server.url + "/v1/chat/completions"
    big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * (300 << 10)}]}
    r = httpx.post(chat, headers=auth["acme"], json=big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(chat, headers={**auth["acme"], "Content-Type": "application/json"},
                   content=iter([json.dumps(big).encode()]))  # chunked, so refused while reading
    assert r.status_code == 413
    deep = b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + \
        b"[" * 990 + b"]" * 990 + b"}"
    for path in ("/v1/chat/completions", "/v1/fine_tuning/alpha/graders/run", "/v1/fine_tuning/jobs"):
        r = httpx.post(server.url + path, headers={**auth["acme"], "Content-Type": "application/json"}, content=deep)
        assert r.status_code == 400 and r.json()["error"]["code"] == "json_too_deep", r.text
    r = httpx.post(server.url + "/v1/fine_tuning/alpha/graders/run", headers=auth["acme"],
                   json={"grader": QUICK, "model_sample": "[" * 990 + "]" * 990})  # brackets in a string are text
    assert r.status_code == 200 and r.json()["reward"] == 0.0


def test_two_on_behalf_of_headers_are_a_400(orgs):
    server, auth = orgs
    r = httpx.get(server.url + "/v1/files", headers=[("Authorization", auth["acme"]["Authorization"]),
                                                     ("X-On-Behalf-Of", "alice"), ("X-On-Behalf-Of", "bob")])
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-On-Behalf-Of"


def test_the_after_cursor_does_not_reveal_that_another_organizations_id_exists(orgs):
    server, auth = orgs
    files = server.url + "/v1/files"

    def put(org: str, name: str) -> str:
        return httpx.post(files, headers=auth[org], data={"purpose": "fine-tune"},
                          files={"file": (name, jsonl(chat_rows(10)))}).json()["id"]

    put("acme", "a1.jsonl")
    theirs = put("globex", "g.jsonl")
    put("acme", "a2.jsonl")
    after_theirs = httpx.get(files, headers=auth["acme"], params={"after": theirs}).json()["data"]
    after_unknown = httpx.get(files, headers=auth["acme"], params={"after": "file-doesnotexist"}).json()["data"]
    assert [f["id"] for f in after_theirs] == [f["id"] for f in after_unknown]


def test_an_interrupted_upload_leaves_no_file_and_no_bytes(orgs):
    server, auth = orgs
    before = sorted(p.name for p in (server.data_dir / "blobs").iterdir())
    head = (f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: {auth['acme']['Authorization']}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 900000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head.encode() + b"--x\r\nContent-Disposition: form-data; name=\"file\"; "
                     b"filename=\"cut.jsonl\"\r\n\r\n" + jsonl(chat_rows(50)))
        time.sleep(0.5)  # closed mid-body
    assert httpx.get(server.url + "/health").status_code == 200
    listed = [f["filename"] for f in httpx.get(server.url + "/v1/files", headers=auth["acme"]).json()["data"]]
    assert "cut.jsonl" not in listed
    assert sorted(p.name for p in (server.data_dir / "blobs").iterdir()) == before


def test_grader_edge_cases_are_answers_not_server_errors(orgs):
    server, auth = orgs
    run = server.url + "/v1/fine_tuning/alpha/graders/run"
    for value in ("10**400", "float('nan')", "float('inf')"):
        grader = {"type": "python", "name": "big", "source": f"def grade(sample, item):\n    return {value}\n"}
        r = httpx.post(run, headers=auth["acme"], json={"grader": grader, "model_sample": "x"}, timeout=60)
        assert r.status_code == 200 and r.json()["reward"] == 0.0
        errors = r.json()["metadata"]["errors"]
        assert errors["python_grader_runtime_error"] and not errors["python_grader_server_error"]
        assert "Traceback" not in errors["python_grader_runtime_error_details"]
    names = [f"g{i}" for i in range(500)]
    many = {"type": "multi", "name": "many", "calculate_output": "+".join(names),
            "graders": {n: {**QUICK, "name": n} for n in names}}
    for formula in ("+".join(names), "a" + "+a" * 900):
        r = httpx.post(run, headers=auth["acme"], json={"grader": {**many, "calculate_output": formula},
                                                         "model_sample": "x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "grader.calculate_output", r.text


def test_many_concurrent_requests_get_answers_or_429_and_health_stays_up(orgs):
    server, auth = orgs

    async def scenario():
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
            async def one(i):
                org = "acme" if i % 2 else "globex"
                try:
                    return (await http.get("/v1/fine_tuning/jobs", headers=auth[org], params={"limit": 5})).status_code
                except httpx.TransportError as exc:  # the test machine's own limits (file descriptors, backlog)
                    return type(exc).__name__

            burst = [asyncio.create_task(one(i)) for i in range(1000)]
            health = []
            while not all(t.done() for t in burst):
                started = time.monotonic()
                health.append(((await http.get("/health")).status_code, time.monotonic() - started))
                await asyncio.sleep(0.2)
            return [t.result() for t in burst], health

    answers, health = asyncio.run(scenario())
    statuses = [a for a in answers if isinstance(a, int)]
    assert len(statuses) >= 900, {a for a in answers if not isinstance(a, int)}
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 128  # 64 per organization at a time, at least
    assert all(code == 200 for code, _ in health) and max(s for _, s in health) < 10  # far from a hang


def test_a_key_created_while_the_server_runs_open_is_enforced_without_a_restart(tmp_path, tiny_model):
    server = Server(tmp_path, f"sqlite:///{tmp_path / 'openft.db'}", {"tiny": str(tiny_model)},
                    enable_scheduler="false").start()
    try:
        assert httpx.get(server.url + "/v1/files").status_code == 200  # open: no keys yet
        key = server.cli("keys", "create", "--org", "acme")
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/v1/files").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert httpx.get(server.url + "/v1/files").status_code == 401
        assert httpx.get(server.url + "/v1/files", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    finally:
        server.stop(signal.SIGKILL)


def test_a_suffix_that_could_leave_its_folder_or_file_name_is_a_400(orgs):
    server, auth = orgs
    acme = server.client(api_key=auth["acme"]["Authorization"][7:])
    training_file = upload(acme, chat_rows(10))
    for suffix in ("../../etc", "a/b", "..", "x" * 65, 'q"; filename=evil'):
        r = httpx.post(server.url + "/v1/fine_tuning/jobs", headers=auth["acme"],
                       json={"model": "tiny", "training_file": training_file, "suffix": suffix})
        assert r.status_code == 400 and r.json()["error"]["param"] == "suffix", (suffix, r.text)
    ok = acme.fine_tuning.jobs.create(model="tiny", training_file=training_file, suffix="v1.2_final-A")
    assert ok.suffix == "v1.2_final-A"
