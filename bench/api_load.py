"""How many requests a second does the API answer under 32 concurrent clients, with a job training beside it?

    .venv/bin/python bench/api_load.py [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
                                       [--clients 32] [--seconds 5] [--rounds 3]

Starts a real `openft serve` (an API key configured, so every request is authenticated) on SQLite and, with
`--postgres`, on a scratch PostgreSQL database (dropped at the end), starts an SFT job on the tests' tiny model that
keeps training during the measurement, then loads four routes in turn, `--rounds` times: `/health` (the anchor:
answered on the event loop with no database, auth or serialization), `GET /v1/fine_tuning/jobs/{id}`,
`GET /v1/fine_tuning/jobs?limit=20` and `GET /v1/fine_tuning/jobs/{id}/events?limit=20`. Prints requests/s and
p50/p99 latency per route (median over the rounds, with the spread), and each route's throughput as a share of
the anchor's.

The load comes from `wrk` (one thread, `--clients` keep-alive connections, its own latency histogram) when it is on
the PATH, otherwise from this script's own asyncio HTTP/1.1 client in a separate process (`--generator python`).
Any answer other than 200 fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import postgres_database  # noqa: E402
from tests.conftest import Server, _kill_trainers  # noqa: E402
from tests.helpers import chat_rows, upload, wait_for_step  # noqa: E402
from tests.tinymodel import build_tiny_model  # noqa: E402

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(url: str, headers: dict, clients: int, seconds: float) -> dict:
    args = ["wrk", "-t1", f"-c{clients}", f"-d{round(seconds)}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failed requests:\n{out}")

    def latency(pct: str) -> float:
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * UNITS[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"rps": rps, "p50": latency("50"), "p99": latency("99"), "seconds": round(seconds)}


async def _python_load(host: str, port: int, path: str, headers: dict, clients: int, seconds: float) -> dict:
    """Keep-alive HTTP/1.1 clients, each sending its next request as soon as the last answer is read."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client():
        reader, writer = await asyncio.open_connection(host, port)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            await reader.readexactly(length)
            if status != 200:
                raise RuntimeError(f"{path} answered {status}")
            latencies.append((time.perf_counter() - start) * 1000)
        writer.close()

    begin = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - begin
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50": latencies[len(latencies) // 2],
            "p99": latencies[int(len(latencies) * 0.99)], "seconds": elapsed}


def run_python(url: str, headers: dict, clients: int, seconds: float) -> dict:
    """The asyncio client in its own process (with uvloop when present), so it does not share the server's core."""
    code = ("import asyncio, json, sys; sys.path.insert(0, sys.argv[1]); from bench.api_load import _python_load;"
            "a = json.loads(sys.argv[2]);\n"
            "try:\n import uvloop; uvloop.install()\nexcept ImportError:\n pass\n"
            "print(json.dumps(asyncio.run(_python_load(*a))))")
    host_port, path = url.removeprefix("http://").split("/", 1)
    host, port = host_port.split(":")
    payload = json.dumps([host, int(port), "/" + path, headers, clients, seconds])
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), payload], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its scheduler thread included, its trainer children not)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(server: Server, key: str, args) -> dict[str, list[dict]]:
    client = server.client(api_key=key)
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, chat_rows(200)), seed=1,
                                         hyperparameters={"n_epochs": 50, "batch_size": 1})
    wait_for_step(client, job.id, 2, timeout=600)  # training (and writing events) beside the load from here on
    routes = {"/health (anchor)": "/health", "GET job": f"/v1/fine_tuning/jobs/{job.id}",
              "list jobs": "/v1/fine_tuning/jobs?limit=20", "list events": f"/v1/fine_tuning/jobs/{job.id}/events?limit=20"}
    load = run_wrk if args.generator == "wrk" else run_python
    headers = {"Authorization": f"Bearer {key}"}
    results: dict[str, list[dict]] = {name: [] for name in routes}
    for _ in range(args.rounds):
        for name, path in routes.items():
            cpu = _cpu_seconds(server.proc.pid)
            row = load(server.url + path, headers, args.clients, args.seconds)
            row["cpu_ms"] = (_cpu_seconds(server.proc.pid) - cpu) * 1000 / (row["rps"] * row["seconds"])
            results[name].append(row)
    if client.fine_tuning.jobs.retrieve(job.id).status != "running":
        raise RuntimeError("the training job stopped during the measurement")
    client.fine_tuning.jobs.cancel(job.id)
    return results


def report(backend: str, results: dict[str, list[dict]], clients: int) -> None:
    def med(rows, key):
        values = [r[key] for r in rows]
        return statistics.median(values), min(values), max(values)

    anchor = med(next(iter(results.values())), "rps")[0]
    print(f"\n{backend}, {clients} concurrent clients, a job training beside it:")
    print(f"{'route':18}{'requests/s (min–max)':>22}{'p50 ms':>9}{'p99 ms (min–max)':>24}{'of anchor':>11}"
          f"{'server CPU ms/request':>23}")
    for name, rows in results.items():
        rps, p50, p99, cpu = med(rows, "rps"), med(rows, "p50"), med(rows, "p99"), med(rows, "cpu_ms")
        print(f"{name:18}{f'{rps[0]:.0f} ({rps[1]:.0f}–{rps[2]:.0f})':>22}{p50[0]:>9.1f}"
              f"{f'{p99[0]:.1f} ({p99[1]:.1f}–{p99[2]:.1f})':>24}{rps[0] / anchor:>11.2f}{cpu[0]:>23.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", help="a PostgreSQL URL whose user may create databases (also measured)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--generator", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python")
    args = parser.parse_args()
    print(f"load generator: {args.generator}; load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    work = Path(tempfile.mkdtemp(prefix="openft-bench-load-"))
    models = {"tiny": str(build_tiny_model(work / "tiny"))}
    try:
        backends = [("SQLite", None)] + ([("PostgreSQL", args.postgres)] if args.postgres else [])
        for backend, pg in backends:
            data_dir = work / backend
            data_dir.mkdir()
            with postgres_database(pg) if pg else contextlib.nullcontext(f"sqlite:///{data_dir / 'openft.db'}") as url:
                server = Server(data_dir, url, models).start()
                try:
                    key = server.cli("keys", "create", "--org", "bench")
                    report(backend, measure(server, key, args), args.clients)
                finally:
                    server.stop(signal.SIGKILL)
                    _kill_trainers(data_dir)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
