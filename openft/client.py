"""`openft` as a client of any openft server: files, jobs (create with --dry-run, watch), models and chat.

Everything goes through the official openai SDK except what it has no call for: the live event stream that
`jobs watch` follows (SSE, with reconnects that send Last-Event-ID) and a dry run's answer (read raw, since the
SDK would parse it as a job). Output is a table by default and JSON with `--json`.

`jobs watch` exits with the job's verdict: 0 succeeded, 1 failed, 3 cancelled, 4 paused (2 is a usage error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

EXIT = {"succeeded": 0, "failed": 1, "cancelled": 3, "paused": 4}
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
COMMANDS = ("files", "jobs", "models", "chat")


def add_connection_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("--base-url", default=default(None),
                        help=f"the server's API root (env OPENFT_BASE_URL; default {DEFAULT_BASE_URL})")
    parser.add_argument("--api-key", default=default(None), help="API key (env OPENFT_API_KEY)")
    parser.add_argument("--json", action="store_true", default=default(False), help="print JSON instead of tables")


def add_commands(sub) -> None:
    """The client commands, added to the `openft` parser (`models` is shared with the server-side `prepare`)."""
    def leaf(group, name: str, help: str) -> argparse.ArgumentParser:
        parser = group.add_parser(name, help=help)
        add_connection_options(parser, suppress=True)
        return parser

    files = sub.add_parser("files", help="upload, list and delete files").add_subparsers(dest="action", required=True)
    up = leaf(files, "upload", "upload a JSONL file")
    up.add_argument("path", type=Path)
    up.add_argument("--purpose", default="fine-tune")
    leaf(files, "list", "list files")
    leaf(files, "delete", "delete a file").add_argument("file_id")

    jobs = sub.add_parser("jobs", help="fine-tuning jobs").add_subparsers(dest="action", required=True)
    _add_create(leaf(jobs, "create", "create a job (a local file path is uploaded first)"))
    leaf(jobs, "list", "list jobs").add_argument("--limit", type=int, default=20)
    for action in ("get", "pause", "resume", "cancel", "checkpoints"):
        leaf(jobs, action, f"{action} a job").add_argument("job_id")
    events = leaf(jobs, "events", "a job's events, oldest first")
    events.add_argument("job_id")
    events.add_argument("--follow", action="store_true", help="keep printing new events until the job stops")
    leaf(jobs, "watch", "follow a job with a progress bar; exit code: its verdict").add_argument("job_id")


def add_model_commands(models) -> None:
    for name, help in (("list", "list the server's models"), ("delete", "delete a fine-tuned model")):
        parser = models.add_parser(name, help=help)
        add_connection_options(parser, suppress=True)
        if name == "delete":
            parser.add_argument("model")


def add_chat_command(sub) -> None:
    chat = sub.add_parser("chat", help="ask a model one question, streaming the answer")
    add_connection_options(chat, suppress=True)
    chat.add_argument("model")
    chat.add_argument("prompt")
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0)


def _add_create(create: argparse.ArgumentParser) -> None:
    create.add_argument("--model", required=True)
    create.add_argument("--training-file", required=True, help="a file id, or a local JSONL path to upload")
    create.add_argument("--validation-file", help="a file id, or a local JSONL path to upload")
    create.add_argument("--method", choices=["supervised", "dpo", "reinforcement"], default="supervised")
    create.add_argument("--n-epochs", type=int)
    create.add_argument("--batch-size", type=int)
    create.add_argument("--learning-rate-multiplier", type=float)
    create.add_argument("--beta", type=float, help="DPO's beta")
    create.add_argument("--grader", type=Path, help="a JSON file with the reinforcement grader")
    create.add_argument("--suffix")
    create.add_argument("--seed", type=int)
    create.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--wandb-project", help="report to this W&B project (the server holds the W&B key)")
    create.add_argument("--dry-run", action="store_true",
                        help="print the plan (tokens, steps, time) and create nothing")
    create.add_argument("--watch", action="store_true", help="then follow it as `jobs watch` does")


# ---- running ---------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    import openai

    from openft.cli_views import Views

    base_url = args.base_url or os.environ.get("OPENFT_BASE_URL") or DEFAULT_BASE_URL
    if urlparse(base_url).path in ("", "/"):  # a bare server address: its OpenAI-style root
        base_url = base_url.rstrip("/") + "/v1"
    client = openai.OpenAI(base_url=base_url, api_key=args.api_key or os.environ.get("OPENFT_API_KEY") or "unused",
                           max_retries=2)
    views = Views(args.json)
    try:
        return _dispatch(args, client, views)
    except openai.APIStatusError as err:
        body = err.body if isinstance(err.body, dict) else {}
        views.error(body.get("message") or str(err), body.get("param"), body.get("code"))
        return 1
    except openai.APIConnectionError:
        views.error(f"cannot reach the server at {base_url} (set --base-url or OPENFT_BASE_URL)")
        return 1
    except (OSError, ValueError) as err:
        views.error(str(err))
        return 2


def _dispatch(args, client, views) -> int:
    command, action = args.command, getattr(args, "action", None) or getattr(args, "models_command", None)
    if command == "chat":
        return _chat(args, client, views)
    if command == "models":
        if action == "delete":
            return views.show(client.models.delete(args.model))
        return views.table(client.models.list().data, ["id", "owned_by", "created"])
    if command == "files":
        if action == "upload":
            with open(args.path, "rb") as f:
                return views.show(client.files.create(file=(args.path.name, f), purpose=args.purpose))
        if action == "delete":
            return views.show(client.files.delete(args.file_id))
        return views.table(list(client.files.list()), ["id", "filename", "purpose", "bytes", "created_at"])
    return _jobs(args, client, views, action)


JOB_COLUMNS = ["id", "model", "status", "fine_tuned_model", "trained_tokens", "created_at", "finished_at"]


def _jobs(args, client, views, action: str) -> int:
    jobs = client.fine_tuning.jobs
    if action == "create":
        return _create(args, client, views)
    if action == "list":
        return views.table(jobs.list(limit=args.limit).data, JOB_COLUMNS)
    if action == "get":
        return views.show(jobs.retrieve(args.job_id))
    if action in ("pause", "resume", "cancel"):
        return views.show(getattr(jobs, action)(args.job_id))
    if action == "checkpoints":
        rows = jobs.checkpoints.list(args.job_id, limit=100).data
        return views.table(rows, ["id", "step_number", "fine_tuned_model_checkpoint", "metrics"])
    if action == "events" and not args.follow:
        return views.table(list(reversed(list(jobs.list_events(args.job_id, limit=100)))),
                           ["created_at", "level", "type", "message"])
    from openft.cli_watch import watch

    return watch(client, args.job_id, views, progress=action == "watch")


def _create(args, client, views) -> int:
    hp = {k: v for k, v in (("n_epochs", args.n_epochs), ("batch_size", args.batch_size),
                            ("learning_rate_multiplier", args.learning_rate_multiplier), ("beta", args.beta))
          if v is not None}
    section = {"hyperparameters": hp}
    if args.grader:
        section["grader"] = json.loads(args.grader.read_text())
    body = {"model": args.model, "training_file": _file_id(client, args.training_file),
            "method": {"type": args.method, args.method: section}}
    if args.validation_file:
        body["validation_file"] = _file_id(client, args.validation_file)
    for key in ("suffix", "seed"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.metadata:
        body["metadata"] = dict(pair.split("=", 1) for pair in args.metadata)
    if args.wandb_project:
        body["integrations"] = [{"type": "wandb", "wandb": {"project": args.wandb_project}}]
    if args.dry_run:
        return views.plan(client.post("/fine_tuning/jobs", body={**body, "dry_run": True}, cast_to=object))
    job = client.fine_tuning.jobs.create(**body)
    if not args.watch:
        return views.show(job)
    from openft.cli_watch import watch

    return watch(client, job.id, views, progress=True)


def _file_id(client, value: str) -> str:
    """A local path is uploaded (purpose fine-tune); anything else is taken as a file id."""
    path = Path(value)
    if not path.is_file():
        return value
    with open(path, "rb") as f:
        return client.files.create(file=(path.name, f), purpose="fine-tune").id


def _chat(args, client, views) -> int:
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    options = {"model": args.model, "messages": messages, "max_tokens": args.max_tokens,
               "temperature": args.temperature}
    if views.json:
        return views.show(client.chat.completions.create(**options))
    for chunk in client.chat.completions.create(**options, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            sys.stdout.write(chunk.choices[0].delta.content)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
