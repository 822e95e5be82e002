"""The live event stream (SSE): every event of a job arrives once and in order, across a pause and a reconnect
with Last-Event-ID, from any replica's database; other organizations get a 404."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers import all_events, chat_rows, upload


def read_stream(url: str, headers: dict, stop_after: int | None = None, until=None) -> tuple[list[dict], dict | None]:
    """SSE frames from ``url`` parsed by the spec's rules: (events, the end frame's data or None if we hung up
    after ``stop_after`` events or at the first event ``until`` accepts)."""
    events, end = [], None
    with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(60, read=60)) as res:
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in res.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
                continue
            if fields.get("event") == "end":
                end = json.loads(fields["data"])
                break
            if fields:
                assert fields["event"] == "fine_tuning.job.event"
                data = json.loads(fields["data"])
                assert data["id"] == fields["id"] and data["object"] == "fine_tuning.job.event"
                events.append(data)
                if (stop_after is not None and len(events) >= stop_after) or (until and until(data)):
                    break
            fields = {}
    return events, end


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # test time; its queries are plain ones
def test_a_stream_delivers_every_event_once_in_order_across_a_pause_and_reconnects(make_server):
    server = make_server()
    key, other = server.cli("keys", "create", "--org", "acme"), server.cli("keys", "create", "--org", "rival")
    server.start()
    client = server.client(api_key=key)
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=upload(client, chat_rows(20)), seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 1}}},
    )
    url = f"{server.url}/v1/fine_tuning/jobs/{job.id}/events"
    auth = {"Authorization": f"Bearer {key}"}

    # Another organization cannot tell the job exists; the stream's errors are the JSON route's.
    res = httpx.get(url + "?stream=true", headers={"Authorization": f"Bearer {other}"})
    assert res.status_code == 404 and res.json()["error"]["code"] == "fine_tune_not_found"
    assert httpx.get(url + "?stream=true").status_code == 401

    # A first connection hangs up early; the second reads until step 2, then the job is paused: the stream ends
    # by itself once it is.
    received, end = read_stream(url + "?stream=true", auth, stop_after=2)
    assert end is None and len(received) == 2
    more, end = read_stream(url, {**auth, "Accept": "text/event-stream", "Last-Event-ID": received[-1]["id"]},
                            until=lambda e: e["type"] == "metrics" and e["data"]["step"] >= 2)
    received += more
    client.fine_tuning.jobs.pause(job.id)
    more, end = read_stream(url + f"?stream=true&after={received[-1]['id']}", auth)
    received += more
    assert end == {"status": "paused"}

    client.fine_tuning.jobs.resume(job.id)
    while end != {"status": "succeeded"}:  # reconnect after every few events, as a flaky network would
        more, end = read_stream(url, {**auth, "Accept": "text/event-stream", "Last-Event-ID": received[-1]["id"]},
                                stop_after=5)
        received += more

    expected = [e.model_dump(mode="json") for e in all_events(client, job.id)]
    assert [e["id"] for e in received] == [e["id"] for e in expected]
    assert received == expected
    messages = [e["message"] for e in received]
    assert "Job paused at step" in " ".join(messages) and messages[-1] == "The job has successfully completed"

    # A finished job's stream replays everything after the cursor and ends at once.
    tail, end = read_stream(url + f"?stream=true&after={expected[-3]['id']}", auth)
    assert [e["id"] for e in tail] == [e["id"] for e in expected[-2:]] and end == {"status": "succeeded"}
