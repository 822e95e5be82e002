"""Does the control plane stay as fast with 10,000 jobs in PostgreSQL as with only the live ones?

    .venv/bin/python bench/control_plane.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres

It creates a scratch database on that server (dropped at the end) holding 200 queued and 20 running jobs (the
running ones on stub attempts that never finish, so the pass does its full work: lease renewal, poll, ingest,
the start claim), measures a scheduler pass (`Scheduler.tick`) and the latency of `GET /v1/fine_tuning/jobs/{id}`
and `GET /v1/fine_tuning/jobs` (a real `openft serve` with its scheduler off), then adds 9,780 finished jobs with
five events each and measures again. Prints medians and the ratio with/without the finished jobs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from openft import tables as t  # noqa: E402
from openft.config import Settings  # noqa: E402
from openft.ids import new_id, now  # noqa: E402
from openft.scheduler import Scheduler  # noqa: E402
from openft.store import Store, migrate  # noqa: E402

METHOD = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1,
                                                                   "learning_rate_multiplier": 2.0}}}


class StubExecutor:
    """Attempts that run forever and report nothing: the scheduler's own cost, without training."""

    host = socket.gethostname()

    def poll(self, handle: dict) -> str:
        return "running"

    def signal(self, job_dir, command: str) -> None:
        pass


def job_row(status: str, **fields) -> dict:
    row = dict(id=new_id("ftjob"), organization_id="org_local", created_at=now(), status=status, model="tiny",
               training_file="file-x", seed=1, method=METHOD, hyperparameters={}, result_files=[], validated=True,
               attempt=0, crashes=0, events_offset=0, worker=None, worker_host=None, finished_at=None,
               fine_tuned_model=None)
    return {**row, **fields}  # every row has the same keys: one multi-row INSERT


def insert(store: Store, rows: list[dict], events_per_job: int = 0) -> None:
    with store.session.begin() as s:
        for i in range(0, len(rows), 1000):
            s.execute(sqlalchemy.insert(t.Job), rows[i:i + 1000])
        events = [dict(id=new_id("ftevent"), job_id=r["id"], created_at=now(), level="info", message=f"event {k}",
                       type="message", data={}) for r in rows for k in range(events_per_job)]
        for i in range(0, len(events), 5000):
            s.execute(sqlalchemy.insert(t.Event), events[i:i + 5000])


def median_ms(fn, n: int) -> float:
    for _ in range(10):  # warm: connection pools, caches
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(scheduler: Scheduler, http: httpx.Client, job_id: str) -> dict[str, float]:
    return {
        "scheduler pass": median_ms(scheduler.tick, 30),
        "GET job": median_ms(lambda: http.get(f"/v1/fine_tuning/jobs/{job_id}").raise_for_status(), 100),
        "list jobs": median_ms(lambda: http.get("/v1/fine_tuning/jobs?limit=20").raise_for_status(), 100),
    }


def serve(url: str, data_dir: Path) -> tuple[subprocess.Popen, httpx.Client]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OPENFT_DATABASE_URL": url, "OPENFT_DATA_DIR": str(data_dir), "OPENFT_ENABLE_SCHEDULER": "0",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "openft.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    for _ in range(300):
        try:
            if http.get("/health").status_code == 200:
                return proc, http
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("OPENFT_TEST_POSTGRES_URL"), required=False,
                        help="a PostgreSQL URL whose user may create databases")
    args = parser.parse_args()
    if not args.postgres:
        parser.error("--postgres is required")
    name = f"openft_bench_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = args.postgres.rsplit("/", 1)[0] + "/" + name
    proc = None
    data_dir = Path(tempfile.mkdtemp(prefix="openft-bench-"))
    try:
        migrate(url)
        store = Store(url)
        settings = Settings(data_dir=data_dir, database_url=url, max_concurrent_jobs=20, replica_id="bench")
        scheduler = Scheduler(store, None, settings, StubExecutor())
        handle = {"executor": "stub"}
        live = [job_row("queued") for _ in range(200)]
        live += [job_row("running", attempt=1, worker=handle, worker_host=StubExecutor.host) for _ in range(20)]
        insert(store, live)
        proc, http = serve(url, data_dir)
        probe = live[-1]["id"]
        before = measure(scheduler, http, probe)
        finished = [job_row("succeeded", finished_at=now(), fine_tuned_model=f"ft:tiny:org_local::{i}")
                    for i in range(9780)]
        insert(store, finished, events_per_job=5)
        with store.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
        after = measure(scheduler, http, probe)
        print(f"{'':16}{'220 jobs':>12}{'10,000 jobs':>14}{'ratio':>8}")
        for key in before:
            print(f"{key:16}{before[key]:>10.1f}ms{after[key]:>12.1f}ms{after[key] / before[key]:>8.2f}")
        store.engine.dispose()
    finally:
        if proc:
            proc.terminate()
            proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
