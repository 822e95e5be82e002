"""Fuzzing the published API: schemathesis (its own CLI, in a subprocess) against a running server's
``/openapi.json``, with our one extra check (``tests.fuzz_hooks``: every error in OpenAI's envelope). Shared by
``tests/test_fuzz_openapi.py`` (a few examples per operation) and ``bench/fuzz.py`` (full size, stateful)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

# What the service promises: no 5xx; every status, header, content type and body as the document says; invalid
# input refused (4xx); a method the path does not serve is a 405 with Allow; and (our hook) OpenAI's envelope.
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection,unsupported_method,use_after_free,"
          "ensure_resource_availability,ignored_auth,error_envelope")


@dataclasses.dataclass
class FuzzResult:
    cases: int
    by_phase: dict[str, int]  # cases per phase: examples, coverage, fuzzing, stateful
    server_errors: int  # failures of not_a_server_error: responses >= 500
    violations: int  # every other failed check: the answer disagrees with the published document
    failures: list[str]
    output: str


def run(base_url: str, api_key: str, report_dir: Path, *, max_examples: int, phases: str, seed: int = 1,
        workers: int = 1, objects: dict[str, str] | None = None) -> FuzzResult:
    """One deterministic schemathesis run over every operation of both prefixes. ``objects`` names existing
    objects by path parameter (``{"file_id": "file-…"}``): those operations then act on them rather than on
    generated ids, which are almost always unknown (404), so that real objects' answers are checked too."""
    report, config = report_dir / "fuzz.ndjson", report_dir / "schemathesis.toml"
    pinned = "".join(f'"path.{name}" = {json.dumps(value)}\n' for name, value in (objects or {}).items())
    config.write_text("[parameters]\n" + pinned)  # TOML
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{base_url}/openapi.json",
        "--checks", CHECKS, "--phases", phases, "--max-examples", str(max_examples), "--seed", str(seed),
        "--generation-deterministic", "--workers", str(workers),
        "--header", f"Authorization: Bearer {api_key}", "--request-timeout", "30", "--no-color",
        "--report", "ndjson", "--report-ndjson-path", str(report), "--continue-on-failure",
        "--suppress-health-check", "all",
    ]
    root = str(Path(__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "PYTHONPATH": pythonpath}
    # run in the report's folder: schemathesis keeps a cache in its working directory
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=report_dir)
    return _summarise(report, out.stdout + out.stderr)


def _summarise(report: Path, output: str) -> FuzzResult:
    """Cases and failed checks, from the run's ndjson report (one ``ScenarioFinished`` event per scenario)."""
    cases, by_phase, failures = 0, {}, []
    for line in report.read_text().splitlines() if report.exists() else []:
        scenario = json.loads(line).get("ScenarioFinished")
        if not scenario:
            continue
        recorder = scenario["recorder"]
        cases += len(recorder.get("cases") or {})
        by_phase[scenario["phase"]] = by_phase.get(scenario["phase"], 0) + len(recorder.get("cases") or {})
        for checks in (recorder.get("checks") or {}).values():
            for check in checks:
                if check["status"] == "failure":
                    failure = (check.get("failure_info") or {}).get("failure") or {}
                    failures.append(f"{check['name']}: {failure.get('operation')}: {failure.get('title')}: "
                                    f"{str(failure.get('message'))[:400]}")
    server = sum(1 for f in failures if f.startswith("not_a_server_error"))
    return FuzzResult(cases, by_phase, server, len(failures) - server, failures, output)
