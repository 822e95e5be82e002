"""score_model and label_model: a model grades the sample, asked through an OpenAI-compatible chat completions endpoint.

The endpoint is a setting (``OPENFT_GRADER_MODEL_BASE_URL``, default this service at http://127.0.0.1:8000/v1, so
any catalog or fine-tuned model can grade; or an upstream such as OpenAI's). The grader's ``input`` messages are
rendered (templates in every text part) and preceded by a system message that asks for a JSON answer,
``{"steps": [...], "result": …}``, which is how OpenAI's model graders answer. No ``response_format`` is sent,
since many compatible servers (this one included) do not implement JSON schemas; the reply is parsed leniently
instead: a JSON object with ``result`` anywhere in the text, else the whole reply as a bare number or label.

- score_model: ``result`` must be a number; it is clipped to ``range`` (default [0, 1]).
- label_model: ``result`` must be one of ``labels`` (compared without case); the reward is 1 if it is one of
  ``passing_labels``, else 0.

HTTP goes through the standard library (urllib), so the trainer, which grades in its own process, needs no web
client. A failed request raises model_grader_server_error, an unusable reply model_grader_parse_error, a refusal
model_grader_refusal_error.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

from openft.graders.outcome import GradeError, Outcome
from openft.graders.templates import render

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


@dataclass(frozen=True)
class Endpoint:
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    timeout: float = 120.0


SCORE_PROMPT = ("You are a grader. Follow the instructions in the conversation, then answer with only a JSON object "
                'of the form {{"steps": [{{"description": "...", "conclusion": "..."}}], "result": <a number from '
                "{low} to {high}>}}.")
LABEL_PROMPT = ("You are a grader. Follow the instructions in the conversation, then answer with only a JSON object "
                'of the form {{"steps": [{{"description": "...", "conclusion": "..."}}], "result": "<label>"}}, '
                "where <label> is exactly one of: {labels}.")


def score_model(grader: dict, sample: dict, item: dict, endpoint: Endpoint, outcome: Outcome) -> float:
    low, high = grader.get("range") or [0, 1]
    reply = _ask(grader, SCORE_PROMPT.format(low=low, high=high), sample, item, endpoint, outcome)
    result = _result(reply)
    try:
        score = float(result) if not isinstance(result, bool) else math.nan
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        raise GradeError("model_grader_parse_error", f"the grader model's result is not a number: {reply[:200]!r}")
    outcome.scores = {"result": score}
    return min(float(high), max(float(low), score))


def label_model(grader: dict, sample: dict, item: dict, endpoint: Endpoint, outcome: Outcome) -> float:
    labels = grader["labels"]
    reply = _ask(grader, LABEL_PROMPT.format(labels=", ".join(labels)), sample, item, endpoint, outcome)
    result = _result(reply)
    answer = result.strip(" .\"'").casefold() if isinstance(result, str) else None
    chosen = next((label for label in labels if label.casefold() == answer), None)
    if chosen is None:
        raise GradeError("model_grader_parse_error", f"the grader model answered no label: {reply[:200]!r}")
    outcome.scores = {"label": chosen}
    return 1.0 if chosen in grader["passing_labels"] else 0.0


def messages(grader: dict, sample: dict, item: dict) -> list[dict]:
    """The grader's input as chat messages, templates filled.

    >>> part = {"type": "input_text", "text": "Grade {{sample.output_text}}"}
    >>> grader = {"input": [{"role": "user", "content": [part]}]}
    >>> messages(grader, {"output_text": "42"}, {})
    [{'role': 'user', 'content': [{'type': 'text', 'text': 'Grade 42'}]}]
    """
    out = []
    for message in grader["input"]:
        content = message["content"]
        if isinstance(content, list):
            content = [_part(p, sample, item) for p in content]
        elif isinstance(content, dict):
            content = [_part(content, sample, item)]
        else:
            content = render(content, sample, item)
        out.append({"role": message["role"], "content": content})
    return out


def _part(part, sample: dict, item: dict) -> dict:
    if isinstance(part, str):
        return {"type": "text", "text": render(part, sample, item)}
    if part["type"] in ("input_text", "output_text"):
        return {"type": "text", "text": render(part["text"], sample, item)}
    if part["type"] == "input_image":
        image = {"url": render(part["image_url"], sample, item)}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    return {"type": "input_audio", "input_audio": part["input_audio"]}


def _ask(grader: dict, instruction: str, sample: dict, item: dict, endpoint: Endpoint, outcome: Outcome) -> str:
    body = {"model": grader["model"], "messages": [{"role": "system", "content": instruction},
                                                  *messages(grader, sample, item)]}
    for key, value in (grader.get("sampling_params") or {}).items():
        if value is not None:
            body["max_completion_tokens" if key == "max_completions_tokens" else key] = value
    outcome.sampled_model_name = grader["model"]
    completion = _post(endpoint, body)
    outcome.add_usage(grader["model"], completion.get("usage") or {})
    try:
        choice = completion["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise GradeError("model_grader_server_error", "the grader model's endpoint answered without choices") from None
    if message.get("refusal") or choice.get("finish_reason") == "content_filter":
        raise GradeError("model_grader_refusal_error", str(message.get("refusal") or "content filtered"))
    return message.get("content") or ""


def _post(endpoint: Endpoint, body: dict) -> dict:
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    request = urllib.request.Request(endpoint.base_url.rstrip("/") + "/chat/completions",
                                     data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=endpoint.timeout) as answer:
            return json.loads(answer.read(16 << 20))
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode(errors="replace")
        raise GradeError("model_grader_server_error", f"HTTP {exc.code} from {request.full_url}: {detail}") from None
    except (OSError, ValueError) as exc:  # refused, unreachable, timed out, or not JSON
        raise GradeError("model_grader_server_error", f"{request.full_url}: {exc}") from None


def _result(reply: str):
    """The ``result`` of the JSON object in a reply, else the whole reply.

    >>> _result('Sure! {"steps": [], "result": 0.8}'), _result(" 7 "), _result('```json\\n{"result": "yes"}\\n```')
    (0.8, '7', 'yes')
    """
    reply = reply[:100_000]
    for match in re.finditer(r"\{", reply):
        try:
            value, _ = json.JSONDecoder().raw_decode(reply[match.start():])
        except ValueError:
            continue
        if isinstance(value, dict) and "result" in value:
            return value["result"]
    return reply.strip()
