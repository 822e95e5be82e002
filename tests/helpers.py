"""Test data and polling helpers shared by the service tests."""

from __future__ import annotations

import io
import json
import time

from openai import OpenAI

TERMINAL = {"succeeded", "failed", "cancelled"}


def chat_rows(n: int, offset: int = 0) -> list[dict]:
    """n small chat examples of varied length (some multi-turn with an untrained turn)."""
    rows = []
    for i in range(offset, offset + n):
        messages = [
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": f"What is item number {i}?"},
            {"role": "assistant", "content": f"Item {i} is a " + "small " * (i % 5) + "thing."},
        ]
        if i % 3 == 0:
            messages[2]["weight"] = 0
            messages += [{"role": "user", "content": "Say it again."}, {"role": "assistant", "content": f"It is {i}."}]
        rows.append({"messages": messages})
    return rows


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client: OpenAI, rows_or_bytes, name: str = "train.jsonl") -> str:
    data = rows_or_bytes if isinstance(rows_or_bytes, bytes) else jsonl(rows_or_bytes)
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune").id


def wait_for(client: OpenAI, job_id: str, statuses, timeout: float = 180):
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        if job.status in TERMINAL:
            raise AssertionError(f"job ended {job.status} while waiting for {statuses}: {job.error}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {statuses}; job is {job.status}")


def all_events(client: OpenAI, job_id: str) -> list:
    """Every event, oldest first (the API pages newest first)."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def step_losses(client: OpenAI, job_id: str) -> dict[int, float]:
    """train_loss by step from the metrics events (a repeated step keeps its latest value)."""
    losses = {}
    for ev in all_events(client, job_id):
        if ev.type == "metrics":
            losses[ev.data["step"]] = ev.data["train_loss"]
    return losses


def wait_for_step(client: OpenAI, job_id: str, step: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = client.fine_tuning.jobs.list_events(job_id, limit=5).data
        if any(e.type == "metrics" and e.data["step"] >= step for e in events):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached")


def preference_rows(n: int, offset: int = 0) -> list[dict]:
    """n small preference pairs (OpenAI's DPO format): a short right answer preferred over a wordy wrong one."""
    rows = []
    for i in range(offset, offset + n):
        rows.append({
            "input": {"messages": [{"role": "user", "content": f"What is item number {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"Item {i}."}],
            "non_preferred_output": [{"role": "assistant", "content": f"I think it might be item {i + 1}, maybe."}],
        })
    return rows


def reinforcement_rows(n: int, offset: int = 0) -> list[dict]:
    """n small RFT rows (OpenAI's format): a prompt ending with a user message, plus fields for the grader."""
    return [{"messages": [{"role": "user", "content": f"Name item number {i}."}], "answer": f"item {i}"}
            for i in range(offset, offset + n)]


FUZZY_GRADER = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}


def assert_fails_at_line_3(report, param: str, rule: str, words: str) -> None:
    """A validation report for a file whose third line breaks ``rule``: failed with the right code and param, and a
    message that names line 3 and says ``words``."""
    code = "invalid_training_file" if param == "training_file" else "invalid_validation_file"
    assert report.error is not None, rule
    assert report.error["code"] == code and report.error["param"] == param
    assert report.error["message"].startswith("Line 3: "), report.error["message"]
    assert words in report.error["message"], report.error["message"]
