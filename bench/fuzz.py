"""Fuzzing the published API at full size: how many generated requests, and how many answers ≥ 500 or at odds with
/openapi.json?

    .venv/bin/python bench/fuzz.py [--max-examples 100] [--workers 2] [--postgres postgresql+psycopg://HOST/postgres]

Starts a real `openft serve` (the tests' tiny model, its scheduler running, a SQLite database under a temporary
directory or a scratch database on the given PostgreSQL server, an API key for organization acme) and runs
schemathesis against its /openapi.json with every phase: schema examples, coverage, random fuzzing, and stateful
sequences that follow the document's links (a created file, upload or job, then the operations on it), with the
same checks as tests/test_fuzz_openapi.py, our error-envelope check included. As a baseline it first runs the
test's bounded configuration on the same server. Prints, for both, the cases run (per phase), responses >= 500,
schema violations and seconds, and the ratio of cases; lists the first failures if there are any. Exit status 1 if any.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import postgres_database  # noqa: E402
from tests import fuzzing  # noqa: E402
from tests.conftest import Server, _kill_trainers  # noqa: E402
from tests.tinymodel import build_tiny_model  # noqa: E402

BOUNDED = {"max_examples": 2, "phases": "examples,coverage,fuzzing"}  # tests/test_fuzz_openapi.py


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=100, help="examples per operation and phase")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres", help="a PostgreSQL server URL: fuzz against a scratch database there")
    args = parser.parse_args()
    full = {"max_examples": args.max_examples, "phases": "examples,coverage,fuzzing,stateful",
            "workers": args.workers, "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="openft-fuzz-") as tmp, _database(args.postgres, Path(tmp)) as url:
        tmp = Path(tmp)
        model = build_tiny_model(tmp / "tiny")
        server = Server(tmp / "data", url, {"tiny": str(model)})
        server.data_dir.mkdir()
        key = server.cli("keys", "create", "--org", "acme")
        server.start()
        try:
            results = {}
            for name, config in (("bounded (the test)", BOUNDED), ("full", full)):
                (tmp / name).mkdir()
                started = time.monotonic()
                results[name] = fuzzing.run(server.url, key, tmp / name, **config), time.monotonic() - started
        finally:
            server.stop(signal.SIGKILL)
            _kill_trainers(server.data_dir)
    for name, (result, seconds) in results.items():
        print(f"{name:>20}: {result.cases:6d} cases, {result.server_errors} responses >= 500, "
              f"{result.violations} schema violations, {seconds:.0f} s  {result.by_phase}")
    (bounded, _), (complete, _) = results.values()
    print(f"{'ratio':>20}: {complete.cases / max(bounded.cases, 1):.1f}x the cases of the bounded run")
    failures = bounded.failures + complete.failures
    for failure in failures[:30]:
        print("  ", failure)
    return 1 if failures else 0


@contextlib.contextmanager
def _database(postgres: str | None, tmp: Path):
    if not postgres:
        yield f"sqlite:///{tmp / 'openft.db'}"
        return
    with postgres_database(postgres) as url:
        yield url


if __name__ == "__main__":
    sys.exit(main())
