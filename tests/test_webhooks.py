"""Webhooks: every terminal (and paused) status reaches the organization's endpoints, signed so that the openai SDK's
`webhooks.unwrap` accepts it, retried after a receiver error and after a service restart, never sent to another
organization."""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openai import OpenAI

from tests.helpers import chat_rows, jsonl, upload, wait_for


class Receiver:
    """A local webhook receiver that answers ``answer`` (an HTTP status) and records every request."""

    def __init__(self):
        self.requests: list[tuple[dict, bytes, int]] = []
        self.answer = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body, receiver.answer))
                self.send_response(receiver.answer)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"

    def delivered(self, secret: str) -> dict[str, object]:
        """Event id → the event the SDK unwrapped, of every request answered 2xx (each verified with ``secret``)."""
        sdk = OpenAI(api_key="unused")
        return {h["webhook-id"]: sdk.webhooks.unwrap(body, h, secret=secret)
                for h, body, answer in self.requests if answer == 200}

    def wait(self, secret: str, n: int, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while len(got := self.delivered(secret)) < n:
            assert time.time() < deadline, f"{len(got)} of {n} webhooks arrived: {self.requests}"
            time.sleep(0.1)
        return got


def test_webhooks_are_signed_retried_and_survive_a_restart(make_server):
    receiver, paused_receiver, other = Receiver(), Receiver(), Receiver()
    server = make_server(webhook_retry_seconds=0.3, webhook_interval=0.1, webhook_timeout_seconds=2)
    rival_key = server.cli("keys", "create", "--org", "rival")
    key = server.cli("keys", "create", "--org", "acme")
    added = json.loads(server.cli("webhooks", "add", "--org", "rival", other.url))
    server.start()
    client = server.client(api_key=key)
    endpoint = client.webhooks.create(url=receiver.url, name="ci", event_types=[
        "fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"],
    )
    secret = endpoint.signing_secret
    assert secret.startswith("whsec_") and endpoint.url == receiver.url
    paused_hook = client.post("/webhook_endpoints", cast_to=object,
                              body={"url": paused_receiver.url, "event_types": ["fine_tuning.job.paused"]})

    # A bad file fails its job; the receiver answers 500 at first, so the webhook is retried with the same id.
    receiver.answer = 500
    bad = upload(client, jsonl(chat_rows(2)) + b'{"messages": []}\n' + jsonl(chat_rows(10)))
    failed = client.fine_tuning.jobs.create(model="tiny", training_file=bad)
    wait_for(client, failed.id, "failed")
    while len(receiver.requests) < 2:
        time.sleep(0.05)
    # The service dies while the webhook is still owed; it is sent after the restart.
    server.stop(signal.SIGKILL)
    receiver.answer = 200
    server.start()
    got = receiver.wait(secret, 1)
    event = next(iter(got.values()))
    assert event.type == "fine_tuning.job.failed" and event.data.id == failed.id
    assert {h["webhook-id"] for h, _, _ in receiver.requests} == set(got)  # every try carried the same id

    train = upload(client, chat_rows(12))
    parked = client.fine_tuning.jobs.create(model="tiny", training_file=train)
    client.fine_tuning.jobs.pause(parked.id)
    # Paused before queued, or (if the scheduler started it first) pausing, then paused at a checkpoint: either way
    # a `paused` webhook is owed before the cancel.
    wait_for(client, parked.id, "paused")
    client.fine_tuning.jobs.cancel(parked.id)
    done = client.fine_tuning.jobs.create(model="tiny", training_file=train,
                                          hyperparameters={"n_epochs": 1, "batch_size": 4})
    wait_for(client, done.id, "succeeded")
    got = receiver.wait(secret, 3)
    assert sorted((e.type, e.data.id) for e in got.values()) == sorted([
        ("fine_tuning.job.failed", failed.id), ("fine_tuning.job.cancelled", parked.id),
        ("fine_tuning.job.succeeded", done.id)])
    paused = paused_receiver.wait(paused_hook["signing_secret"], 1)  # openft's own event type, signed the same way
    assert [(e.type, e.data.id) for e in paused.values()] == [("fine_tuning.job.paused", parked.id)]

    # Another organization's endpoint heard nothing of these jobs, nor can that organization see this endpoint.
    assert other.requests == []
    rival = server.client(api_key=rival_key)
    assert [e["id"] for e in rival.get("/webhook_endpoints", cast_to=object)["data"]] == [added["id"]]
    listing = server.cli("webhooks", "list", "--org", "acme")
    assert f"{endpoint.id}\tacme\t{receiver.url}\t0 pending, 3 delivered, 0 failed" in listing
    assert client.webhooks.delete(endpoint.id).deleted
