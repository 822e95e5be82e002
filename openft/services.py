"""The long-lived objects a request handler needs, built once at start-up by openft.app."""

from __future__ import annotations

from dataclasses import dataclass

from openft.blobs import Blobs
from openft.config import Settings
from openft.store import Store


@dataclass
class Services:
    settings: Settings
    store: Store
    blobs: Blobs
    open_mode: bool  # no keys configured: every request is org_local (the server is bound to loopback)
