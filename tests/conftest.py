"""Shared fixtures: a tiny model built once, a real database (a SQLite file, or a fresh PostgreSQL database), and
the real service started as a subprocess (`python -m openft.cli serve`), driven with the official openai SDK."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.tinymodel import build_tiny_model

PG_URL = os.environ.get("OPENFT_TEST_POSTGRES_URL")


def _postgres_reachable() -> bool:
    if not PG_URL:
        return False
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(PG_URL).connect():
            return True
    except Exception:
        if os.environ.get("OPENFT_TEST_REQUIRE_POSTGRES"):
            raise
        return False


BACKENDS = ["sqlite"] + (["postgres"] if _postgres_reachable() else [])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@contextlib.contextmanager
def _postgres_database():
    """A fresh PostgreSQL database on the test server, dropped afterwards."""
    import sqlalchemy

    name = f"openft_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# For a test whose subject is training (exactness, recovery, a client's view), not the store: the store's writes on
# both backends are covered by the API suites, so it runs once, on SQLite.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'openft.db'}"
        return
    with _postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def module_postgres_url():
    with _postgres_database() as url:
        yield url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The real service in its own process, restartable on the same data directory and database."""

    def __init__(self, data_dir: Path, database_url: str, models: dict[str, str], **settings):
        self.data_dir, self.port, self.proc = data_dir, _free_port(), None
        self.env = {
            **os.environ,
            "OPENFT_DATA_DIR": str(data_dir),
            "OPENFT_DATABASE_URL": database_url,
            "OPENFT_MODELS": json.dumps(models),
            "OPENFT_SCHEDULER_INTERVAL": "0.1",
            **{f"OPENFT_{k.upper()}": str(v) for k, v in settings.items()},
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "openft.cli", *args], env=self.env, check=True,
                             capture_output=True, text=True)
        return out.stdout.strip()

    def start(self) -> "Server":
        log = open(self.data_dir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "openft.cli", "serve", "--port", str(self.port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.data_dir / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def client(self, prefix: str = "/v1", api_key: str = "unused", **kw) -> OpenAI:
        return OpenAI(base_url=self.url + prefix, api_key=api_key, **{"max_retries": 0, **kw})


def _kill_trainers(data_dir: Path) -> None:
    """Training attempts run in their own session (they outlive a service restart): end the test's own ones."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, PermissionError, NotADirectoryError, ProcessLookupError):
            continue
        if b"openft.train" in cmd and any(str(data_dir).encode() in part for part in cmd):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def make_server(tmp_path, database_url, tiny_model):
    servers = []

    def make(**settings) -> Server:
        server = Server(tmp_path / "data", database_url, {"tiny": str(tiny_model)}, **settings)
        server.data_dir.mkdir(exist_ok=True)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(signal.SIGKILL)
    _kill_trainers(tmp_path / "data")


@pytest.fixture
def server(make_server) -> Server:
    return make_server().start()
