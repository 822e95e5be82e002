"""Who is calling: an API key (stored hashed, see ``Store.add_key``) or an internal token → an organization.

Internal tokens let the service call itself as an organization: a model grader (score_model, label_model) samples
this service's chat completions as the organization that runs it, so it sees that organization's models and no
other's. A token is ``ofint-<org>.<expiry>.<job>.<signature>``, signed (HMAC-SHA256) with a secret that the service
creates once in ``<data_dir>/internal-token.key`` (mode 0600) and never sends anywhere. A token minted for a
graders/run call lives a few minutes; one minted for a reinforcement job names the job and is accepted only while
that job is not finished (it lives in the job's spec file for as long as the job trains).

Keys are looked up once and remembered for ``KEY_CACHE_SECONDS`` (keys are only ever added); the open mode (no keys
at start-up) ends as soon as a key exists, without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path

from openft.config import Settings

TOKEN_PREFIX = "ofint-"
GRADER_TOKEN_SECONDS = 600  # a graders/run call lasts at most the grading timeout (300 s)
JOB_TOKEN_SECONDS = 30 * 24 * 3600  # a job's token also ends with the job
KEY_CACHE_SECONDS = 60.0
OPEN_MODE_RECHECK_SECONDS = 1.0
LOCAL_ORG = "org_local"
ORG = re.compile(r"[A-Za-z0-9_-]{1,64}")
TERMINAL = ("succeeded", "failed", "cancelled")


_SECRETS: dict[Path, bytes] = {}


def _secret(settings: Settings) -> bytes:
    path = (Path(settings.data_dir) / "internal-token.key").resolve()
    if path not in _SECRETS:
        _SECRETS[path] = _read_or_create(path)
    return _SECRETS[path]


def _read_or_create(path: Path) -> bytes:
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        time.sleep(0.05)
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def _sign(settings: Settings, payload: str) -> str:
    return hmac.new(_secret(settings), payload.encode(), hashlib.sha256).hexdigest()


def mint(settings: Settings, org: str, *, job_id: str | None = None) -> str:
    """A token that authenticates as ``org`` (for a job: only while the job ``job_id`` is not finished)."""
    seconds = JOB_TOKEN_SECONDS if job_id else GRADER_TOKEN_SECONDS
    payload = f"{org}.{int(time.time() + seconds)}.{job_id or '-'}"
    return f"{TOKEN_PREFIX}{payload}.{_sign(settings, payload)}"


def verify(settings: Settings, token: str) -> tuple[str, str | None] | None:
    """(organization, job id or None) of a valid, unexpired internal token; None otherwise."""
    parts = token.removeprefix(TOKEN_PREFIX).split(".")
    if len(parts) != 4 or not ORG.fullmatch(parts[0]) or not parts[1].isdigit():
        return None
    org, expiry, job, signature = parts
    if not hmac.compare_digest(_sign(settings, f"{org}.{expiry}.{job}"), signature) or int(expiry) < time.time():
        return None
    return org, None if job == "-" else job


class Authenticator:
    """Resolves an Authorization header to an organization, for the request guard (openft.api.guard)."""

    def __init__(self):
        self._keys: dict[str, tuple[str, float]] = {}
        self._open_checked = 0.0

    def organization(self, svc, authorization: str) -> str | None:
        """The calling organization, or None for a missing or wrong key."""
        if svc.open_mode and time.monotonic() - self._open_checked > OPEN_MODE_RECHECK_SECONDS:
            self._open_checked = time.monotonic()
            svc.open_mode = not svc.store.has_keys()  # a key created while serving is enforced at once
        if svc.open_mode:
            return LOCAL_ORG
        key = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        if not key:
            return None
        if key.startswith(TOKEN_PREFIX):
            return self._internal(svc, key)
        cached = self._keys.get(key)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        org = svc.store.org_for_key(key)
        if org is not None:
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[key] = (org, time.monotonic() + KEY_CACHE_SECONDS)
        return org

    @staticmethod
    def _internal(svc, token: str) -> str | None:
        found = verify(svc.settings, token)
        if found is None:
            return None
        org, job_id = found
        if job_id is not None:
            job = svc.store.get_job(None, job_id)
            if job is None or job.organization_id != org or job.status in TERMINAL:
                return None
        return org
