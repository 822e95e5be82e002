"""Webhooks as OpenAI sends them: `fine_tuning.job.succeeded`, `.failed`, `.cancelled` (and openft's own
`.paused`, an extension) to each endpoint an organization registered, signed per the Standard Webhooks spec.

Owns the endpoints (create, list, delete), the wire body and its signature, and the dispatcher that drains the
delivery queue. Deliveries are queued in the database by ``Store.transition``, in the very transaction that
changes the job's status, so a status change and its webhooks are recorded together. The dispatcher (a thread in
each API process) claims due deliveries, POSTs them, and retries a failure with exponential backoff until
``webhook_max_attempts``: at least once, across restarts, without two replicas sending the same attempt.

Signature (what ``client.webhooks.unwrap(body, headers, secret=...)`` of the openai SDK verifies): headers
``webhook-id`` (the event id, the same on every retry: receivers de-duplicate with it), ``webhook-timestamp``
(seconds, of this attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed
with the base64-decoded part of the endpoint's ``whsec_…`` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from urllib.parse import urlparse

import httpx

from openft import tables as t
from openft.config import Settings
from openft.errors import InvalidRequest, NotFound
from openft.ids import new_id, now
from openft.store import WEBHOOK_STATUSES, Store

log = logging.getLogger("openft.webhooks")
EVENT_TYPES = sorted(f"fine_tuning.job.{status}" for status in WEBHOOK_STATUSES)


# ---- endpoints -------------------------------------------------------------------------------------------------


def create_endpoint(store: Store, org: str, url: str, name: str | None = None,
                    event_types: list[str] | None = None) -> t.WebhookEndpoint:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidRequest(f"url must be an http(s) URL, got {url!r}.", param="url")
    types = event_types or EVENT_TYPES
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise InvalidRequest(f"Unsupported event types {unknown}; this server sends {EVENT_TYPES}.",
                             param="event_types")
    endpoint = t.WebhookEndpoint(
        id=new_id("we"), organization_id=org, name=name or parsed.netloc, url=url, event_types=sorted(set(types)),
        secret="whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(), created_at=now(),
    )
    store.add(endpoint)
    return endpoint


def get_endpoint(store: Store, org: str, endpoint_id: str) -> t.WebhookEndpoint:
    endpoint = store.get_webhook_endpoint(org, endpoint_id)
    if endpoint is None:
        raise NotFound(f"No webhook endpoint {endpoint_id}.", param="webhook_endpoint_id")
    return endpoint


def to_wire(endpoint: t.WebhookEndpoint, with_secret: bool = False) -> dict:
    wire = {"id": endpoint.id, "object": "webhook_endpoint", "created_at": endpoint.created_at,
            "updated_at": endpoint.created_at, "name": endpoint.name, "url": endpoint.url,
            "event_types": endpoint.event_types, "signing_secret_hint": endpoint.secret[:10] + "…"}
    return {**wire, "signing_secret": endpoint.secret} if with_secret else wire


# ---- the wire --------------------------------------------------------------------------------------------------


def body(delivery: t.WebhookDelivery) -> bytes:
    event = {"id": delivery.id, "object": "event", "created_at": delivery.created_at, "type": delivery.type,
             "data": {"id": delivery.job_id}}
    return json.dumps(event, separators=(",", ":")).encode()


def signed_headers(secret: str, event_id: str, payload: bytes, timestamp: int) -> dict[str, str]:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{event_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()
    return {"webhook-id": event_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac).decode(), "content-type": "application/json",
            "user-agent": "openft-webhooks"}


# ---- the dispatcher --------------------------------------------------------------------------------------------


class Dispatcher:
    def __init__(self, store: Store, settings: Settings):
        self.store, self.settings = store, settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="openft-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.settings.webhook_timeout_seconds + 5)

    def _run(self) -> None:
        with httpx.Client(timeout=self.settings.webhook_timeout_seconds, follow_redirects=False) as http:
            while not self._stop.is_set():
                try:
                    self.tick(http)
                except Exception:  # the queue is in the database: the next tick carries on
                    log.exception("webhook dispatch failed")
                self._stop.wait(self.settings.webhook_interval)

    def tick(self, http: httpx.Client) -> None:
        # One claim per send: a send takes at most the timeout, so the lease outlasts it; a process that dies
        # mid-send leaves the delivery claimed, and it is sent again once the lease is over.
        lease = 2 * self.settings.webhook_timeout_seconds + 1
        for _ in range(20):
            claimed = self.store.claim_webhook_deliveries(time.time(), lease, limit=1)
            if not claimed:
                return
            self._deliver(http, *claimed[0])

    def _deliver(self, http: httpx.Client, delivery: t.WebhookDelivery, endpoint: t.WebhookEndpoint) -> None:
        error = self._send(http, delivery, endpoint)
        attempts = delivery.attempts + 1
        if error is None:
            self.store.record_webhook_attempt(delivery.id, "delivered", 0.0, None)
        elif attempts >= self.settings.webhook_max_attempts:
            log.warning("webhook %s to %s failed for good: %s", delivery.id, endpoint.url, error)
            self.store.record_webhook_attempt(delivery.id, "failed", 0.0, error)
        else:
            delay = min(self.settings.webhook_retry_seconds * 2 ** (attempts - 1), 3600.0)
            self.store.record_webhook_attempt(delivery.id, "pending", time.time() + delay, error)

    def _send(self, http: httpx.Client, delivery: t.WebhookDelivery, endpoint: t.WebhookEndpoint) -> str | None:
        """POST one delivery; None when the receiver took it (any 2xx), else what went wrong."""
        payload = body(delivery)
        headers = signed_headers(endpoint.secret, delivery.id, payload, now())
        try:
            res = http.post(endpoint.url, content=payload, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= res.status_code < 300 else f"HTTP {res.status_code}"
