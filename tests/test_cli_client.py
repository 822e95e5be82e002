"""`openft` as a client: it drives a job from upload to succeeded, `jobs watch` shows live progress in a terminal and
exits with the job's verdict, `--json` output parses, and errors come out as one clear line."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

from tests.conftest import sqlite_only
from tests.helpers import chat_rows, jsonl

pytestmark = sqlite_only  # a client: the backend is moot


def openft(server, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENFT_BASE_URL": server.url + "/v1", "OPENFT_API_KEY": "unused"}
    out = subprocess.run([sys.executable, "-m", "openft.cli", *args], env=env, capture_output=True, text=True,
                         timeout=300)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def openft_json(server, *args: str):
    return json.loads(openft(server, *args, "--json").stdout)


def in_terminal(server, *args: str) -> tuple[int, str]:
    """Run `openft args` in a pseudo terminal, as a person would; returns its exit code and what it showed."""
    env = {**os.environ, "OPENFT_BASE_URL": server.url + "/v1", "TERM": "xterm", "COLUMNS": "120"}
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "openft.cli", *args], env=env, stdin=follower, stdout=follower,
                            stderr=follower, close_fds=True)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    return proc.wait(timeout=60), shown.decode(errors="replace")


def test_the_cli_drives_a_job_from_upload_to_succeeded_with_a_live_progress_bar(server, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_bytes(jsonl(chat_rows(12)))
    uploaded = openft_json(server, "files", "upload", str(train))
    assert uploaded["id"].startswith("file_") and uploaded["filename"] == "train.jsonl"
    assert uploaded["id"] in openft(server, "files", "list").stdout  # a table

    plan = openft(server, "jobs", "create", "--model", "tiny", "--training-file", uploaded["id"], "--n-epochs", "1",
                  "--batch-size", "1", "--dry-run").stdout
    assert "Dry run" in plan and "12 steps" in plan and "12 examples" in plan

    job = openft_json(server, "jobs", "create", "--model", "tiny", "--training-file", str(train), "--n-epochs", "1",
                      "--batch-size", "1", "--suffix", "cli", "--metadata", "team=ml")
    assert job["status"] == "validating_files" and job["metadata"] == {"team": "ml"}
    code, shown = in_terminal(server, "jobs", "watch", job["id"])
    assert code == 0, shown
    assert "12/12" in shown and "loss" in shown and "ETA" in shown  # the progress bar, at its end
    assert "Fine-tuning job started" in shown and "succeeded" in shown
    assert "\x1b[" in shown  # drawn live with terminal control sequences

    done = openft_json(server, "jobs", "get", job["id"])
    assert done["status"] == "succeeded" and done["fine_tuned_model"] in shown
    assert [j["id"] for j in openft_json(server, "jobs", "list")] == [job["id"]]
    events = openft_json(server, "jobs", "events", job["id"])
    assert events[0]["message"].startswith("Created fine-tuning job") and len(events) > 12
    followed = openft(server, "jobs", "events", job["id"], "--follow", "--json").stdout.splitlines()
    assert [json.loads(line)["id"] for line in followed[:-1]] == [e["id"] for e in events]
    assert json.loads(followed[-1])["status"] == "succeeded"
    final = openft_json(server, "jobs", "checkpoints", job["id"])[0]
    assert final["fine_tuned_model_checkpoint"] == done["fine_tuned_model"]
    assert done["fine_tuned_model"] in [m["id"] for m in openft_json(server, "models", "list")]

    answer = openft(server, "chat", done["fine_tuned_model"], "What is item number 3?", "--max-tokens", "8").stdout
    whole = server.client().chat.completions.create(model=done["fine_tuned_model"], max_tokens=8, temperature=0,
                                                   messages=[{"role": "user", "content": "What is item number 3?"}])
    assert answer == whole.choices[0].message.content + "\n"  # streamed, greedy: the same answer
    assert openft_json(server, "files", "delete", uploaded["id"])["deleted"] is True


def test_watch_exits_with_the_jobs_verdict_and_errors_are_one_clear_line(server, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl(chat_rows(2)) + b'{"messages": [{"role": "user"}]}\n' + jsonl(chat_rows(10)))
    job = openft_json(server, "jobs", "create", "--model", "tiny", "--training-file", str(bad))
    code, shown = in_terminal(server, "jobs", "watch", job["id"])
    assert code == 1 and "failed" in shown and "Line 3" in shown

    missing = openft(server, "jobs", "get", "ftjob_nope", check=False)
    assert missing.returncode == 1 and "Could not find fine tune: ftjob_nope" in missing.stderr
    dry = openft(server, "jobs", "create", "--model", "tiny", "--training-file", str(bad), "--dry-run", check=False)
    assert dry.returncode == 1 and "Line 3" in dry.stderr and "invalid_training_file" in dry.stderr
    unreachable = subprocess.run([sys.executable, "-m", "openft.cli", "--base-url", "http://127.0.0.1:9/v1",
                                  "jobs", "list"], capture_output=True, text=True, timeout=120)
    assert unreachable.returncode == 1 and "cannot reach the server" in unreachable.stderr
