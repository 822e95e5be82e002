"""`openft jobs watch` and `jobs events --follow`: follow a job's live event stream (SSE) until it stops.

The stream is read with httpx (the SDK has no call for it). A dropped connection is reopened with the id of the last
event received as Last-Event-ID, so no event is shown twice or lost. The stream ends by itself when the job is
succeeded, failed, cancelled or paused; that status is the verdict (see ``openft.client.EXIT``).
"""

from __future__ import annotations

import json
import time

import httpx
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from openft.client import EXIT


def stream(client, job_id: str):
    """Yield ("event", dict) for every event of the job, oldest first, then ("end", status); reconnects."""
    url = f"{str(client.base_url).rstrip('/')}/fine_tuning/jobs/{job_id}/events"
    headers = {"Authorization": f"Bearer {client.api_key}", "Accept": "text/event-stream"}
    last_id, failures = None, 0
    while True:
        try:
            with httpx.stream("GET", url, headers={**headers, **({"Last-Event-ID": last_id} if last_id else {})},
                              timeout=httpx.Timeout(10, read=60)) as res:
                if res.status_code != 200:
                    res.read()
                    raise_status(client, res)
                for kind, data in _frames(res.iter_lines()):
                    failures = 0
                    if kind == "end":
                        yield "end", data["status"]
                        return
                    last_id = data["id"]
                    yield "event", data
        except (httpx.TransportError, httpx.RemoteProtocolError):
            failures += 1
            time.sleep(min(0.5 * 2**failures, 10.0))


def raise_status(client, res: httpx.Response) -> None:
    """Raise the SDK's error type for a failed response, so that the commands report every error the same way."""
    import openai

    try:
        body = res.json().get("error")
    except ValueError:
        body = None
    message = body.get("message") if isinstance(body, dict) else res.text
    raise openai.APIStatusError(message, response=res, body=body)


def _frames(lines):
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            continue  # a keep-alive comment
        if line:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
            continue
        if "data" in fields:
            yield ("end" if fields.get("event") == "end" else "event"), json.loads(fields["data"])
        fields = {}


def watch(client, job_id: str, views, progress: bool) -> int:
    if views.json:
        for kind, data in stream(client, job_id):
            if kind == "event":
                print(json.dumps(data), flush=True)
        job = client.fine_tuning.jobs.retrieve(job_id)
        print(json.dumps(job.model_dump(mode="json")), flush=True)
        return EXIT.get(job.status, 1)
    if not progress:
        for kind, data in stream(client, job_id):
            if kind == "event":
                views.out.print(_line(data))
            else:
                views.out.print(f"[bold]{data}[/]")
        return EXIT.get(data, 1)
    return _progress(client, job_id, views)


def _progress(client, job_id: str, views) -> int:
    bar = Progress(
        TextColumn("[bold]{task.fields[status]:<10}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("steps  loss {task.fields[loss]}  ETA {task.fields[eta]}"),
        console=views.out, transient=False,
    )
    checked = 0.0
    with bar:
        task = bar.add_task(job_id, total=None, status="…", loss="-", eta="-")
        for kind, data in stream(client, job_id):
            if kind == "end":
                bar.update(task, status=data, eta="-")
                status = data
                break
            if data["type"] == "metrics":
                d = data["data"]
                loss = d.get("train_loss") if "train_mean_reward" not in d else d["train_mean_reward"]
                bar.update(task, total=d["total_steps"], completed=d["step"], loss=f"{loss:.4f}")
            else:
                bar.console.print(_line(data))
            if time.monotonic() - checked > 2:  # status and ETA come from the job itself, at most every 2 s
                checked = time.monotonic()
                job = client.fine_tuning.jobs.retrieve(job_id)
                eta = f"{max(0, job.estimated_finish - int(time.time()))}s" if job.estimated_finish else "-"
                bar.update(task, status=job.status, eta=eta)
    job = client.fine_tuning.jobs.retrieve(job_id)
    verdict = {"succeeded": f"[green]succeeded[/]: {job.fine_tuned_model}",
               "failed": f"[red]failed[/]: {job.error.message if job.error else ''}"}
    views.out.print(verdict.get(status, status))
    return EXIT.get(status, 1)


def _line(event: dict) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event["created_at"]))
    color = {"error": "red", "warn": "yellow"}.get(event["level"], "default")
    return f"{stamp} [{color}]{escape(event['message'])}[/]"
