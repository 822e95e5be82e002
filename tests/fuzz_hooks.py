"""schemathesis hooks for fuzzing openft (loaded with ``SCHEMATHESIS_HOOKS=tests.fuzz_hooks``): the check that every
error is in OpenAI's envelope, and a cap on generation so that a chat request that happens to name a real model
samples a couple of tokens rather than a whole context."""

from __future__ import annotations

import json

import schemathesis

ENVELOPE_KEYS = {"message", "type", "param", "code"}
GENERATION_CAP = 2


@schemathesis.check
def error_envelope(ctx, response, case):
    """A 4xx or 5xx answers ``{"error": {"message", "type", "param", "code"}}`` with a non-empty message."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} answer is not JSON: {response.content[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(error, dict) and set(error) == ENVELOPE_KEYS and set(body) == {"error"}):
        raise AssertionError(f"{response.status_code} answer is not OpenAI's error envelope: {body!r:.300}")
    if not (isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)):
        raise AssertionError(f"{response.status_code} envelope lacks a message or a type: {error!r:.300}")
    return None


@schemathesis.hook
def map_body(context, body):
    """Chat requests: at most GENERATION_CAP tokens and one choice (only valid values are lowered, so that an
    invalid value the fuzzer chose on purpose stays invalid)."""
    operation = context.operation
    if operation is None or "/chat/completions" not in operation.path or not isinstance(body, dict):
        return body
    capped = dict(body)
    for name in ("max_tokens", "max_completion_tokens"):
        value = capped.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > GENERATION_CAP:
            capped[name] = GENERATION_CAP
    if "max_tokens" not in capped and "max_completion_tokens" not in capped:
        capped["max_tokens"] = GENERATION_CAP
    n = capped.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        capped["n"] = 1
    return capped
