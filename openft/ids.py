"""Public identifiers: `ftjob_` + 32 hex (the seed's format) and friends, and fine-tuned model names."""

from __future__ import annotations

import re
import secrets
import string
import time
import uuid

_BASE62 = string.digits + string.ascii_letters


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def short_id() -> str:
    """8 random base62 characters, the last segment of an OpenAI fine-tuned model name."""
    return "".join(secrets.choice(_BASE62) for _ in range(8))


def now() -> int:
    return int(time.time())


def slug(text: str) -> str:
    """Lower-case, dash-separated: fit for a segment of a model name (no ':' inside)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "org"


def fine_tuned_model_name(base: str, org: str, suffix: str | None, id8: str) -> str:
    """`ft:{base}:{org}:{suffix}:{id8}` as OpenAI names them (an empty suffix leaves an empty segment)."""
    return f"ft:{base}:{slug(org)}:{suffix or ''}:{id8}"


def checkpoint_model_name(base: str, org: str, suffix: str | None, step: int) -> str:
    return f"{fine_tuned_model_name(base, org, suffix, short_id())}:ckpt-step-{step}"
