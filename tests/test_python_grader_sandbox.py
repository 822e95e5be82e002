"""Hostile python graders are contained: each scores 0 with the right error flag, nothing leaks out of the
sandbox, and the process that ran them keeps working. The kernel layers alone (no audit hook) hold too."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from openft.graders import make_sample, run_grader
from openft.graders.outcome import FLAGS, GradeError
from openft.graders.sandbox import RUNNER, run_python


@pytest.fixture
def service_files(tmp_path):
    """A stand-in for the service's data directory: a SQLite database holding a secret, and a key file."""
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "openft.db") as db:
        db.execute("CREATE TABLE api_keys (hash TEXT)")
        db.execute("INSERT INTO api_keys VALUES ('secret-hash')")
    (data / "keys.txt").write_text("sk-secret")
    return data


def grade(source: str, item: dict | None = None, timeout: float = 5) -> tuple[float | None, str | None, str]:
    """(score, None, "") or (None, flag, details)."""
    try:
        return run_python(source, make_sample("x"), item or {}, timeout=timeout), None, ""
    except GradeError as exc:
        return None, exc.flag, exc.details


HOSTILE = {
    "reads /etc/passwd": ("def grade(s, i):\n    return len(open('/etc/passwd').read())", "python_grader_runtime_error",
                          "PermissionError"),
    "reads the service database": ("def grade(s, i):\n    return len(open(i['db'], 'rb').read())",
                                   "python_grader_runtime_error", "PermissionError"),
    "queries the service database": ("import sqlite3\ndef grade(s, i):\n    sqlite3.connect(i['db']).execute('select 1')\n",
                                     "python_grader_runtime_error", "PermissionError"),
    "reads the service keys": ("import pathlib\ndef grade(s, i):\n    return len(pathlib.Path(i['keys']).read_text())",
                               "python_grader_runtime_error", "PermissionError"),
    "lists the data directory": ("import os\ndef grade(s, i):\n    return len(os.listdir(i['dir']))",
                                 "python_grader_runtime_error", "PermissionError"),
    "reads the parent's environment": ("def grade(s, i):\n    return len(open(f'/proc/{i[\"pid\"]}/environ', 'rb').read())",
                                       "python_grader_runtime_error", "PermissionError"),
    "opens a socket": ("import socket\ndef grade(s, i):\n    socket.socket().connect(('127.0.0.1', i['port']))\n",
                       "python_grader_runtime_error", "PermissionError"),
    "forks in a loop": ("import os\ndef grade(s, i):\n    while True:\n        os.fork()\n", "python_grader_runtime_error",
                        "PermissionError"),
    "runs a subprocess": ("import subprocess\ndef grade(s, i):\n    return subprocess.run(['id']).returncode",
                          "python_grader_runtime_error", "PermissionError"),
    "loads ctypes": ("def grade(s, i):\n    import ctypes\n    return ctypes.CDLL(None).getpid()", "python_grader_runtime_error",
                     "PermissionError"),
    "kills its parent": ("import os\ndef grade(s, i):\n    os.kill(i['pid'], 9)\n", "python_grader_runtime_error",
                         "PermissionError"),
    "allocates 10 GB": ("def grade(s, i):\n    block = bytearray(10 * 2**30)\n    return 1.0", "python_grader_runtime_error",
                        "MemoryError"),
    "writes outside its folder": ("def grade(s, i):\n    open(i['outside'], 'w').write('pwned')\n    return 1.0",
                                  "python_grader_runtime_error", "PermissionError"),
    "patches the audit hook's helpers": ("import builtins, os\nbuiltins.any = lambda *a: True\nos.path.realpath = str\n"
                                         "def grade(s, i):\n    return len(open('/etc/passwd').read())",
                                         "python_grader_runtime_error", "PermissionError"),
    "returns a string": ("def grade(s, i):\n    return 'high'", "python_grader_runtime_error", "not a number"),
    "raises": ("def grade(s, i):\n    return 1 / 0", "python_grader_runtime_error", "ZeroDivisionError: division by zero (line 2)"),
    "defines no grade": ("def score(s, i):\n    return 1", "python_grader_runtime_error", "does not define grade"),
    "exits": ("import os\ndef grade(s, i):\n    os._exit(0)", "python_grader_server_error", "no_result"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_grader_is_contained_and_scores_zero_with_its_flag(name, service_files, tmp_path):
    source, flag, says = HOSTILE[name]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        item = {"db": str(service_files / "openft.db"), "keys": str(service_files / "keys.txt"), "dir": str(service_files),
                "pid": os.getpid(), "port": listener.getsockname()[1], "outside": str(tmp_path / "outside.txt")}
        score, raised, details = grade(source, item)
    assert (score, raised) == (None, flag) and says in details, details
    assert not (tmp_path / "outside.txt").exists()


@pytest.mark.parametrize("source", ["def grade(s, i):\n    while True:\n        pass\n",
                                    "import time\ndef grade(s, i):\n    time.sleep(3600)\n"])
def test_a_grader_that_never_answers_is_killed_at_the_time_limit(source):
    started = time.monotonic()
    score, flag, _ = grade(source, timeout=1.5)
    assert (score, flag) == (None, "unresponsive_reward_error")
    assert time.monotonic() - started < 5


def test_the_grader_may_use_the_standard_library_and_its_own_folder():
    source = ("import json, math, re, statistics, collections, difflib, pathlib\n"
              "def grade(sample, item):\n"
              "    pathlib.Path('scratch.json').write_text(json.dumps(item))\n"
              "    print('debug output does not disturb the result')\n"
              "    back = json.loads(open('scratch.json').read())\n"
              "    return statistics.mean(back['xs']) / math.sqrt(16)\n")
    assert grade(source, {"xs": [1, 2, 3]}) == (0.5, None, "")


def test_a_failing_python_grader_reports_details_in_the_run_response():
    result = run_grader({"type": "python", "name": "p", "source": "def grade(s, i):\n    return open('/etc/shadow').read()"},
                        make_sample("x"), {})
    errors = result["metadata"]["errors"]
    assert result["reward"] == 0.0 and [f for f in FLAGS if errors[f]] == ["python_grader_runtime_error"]
    assert "PermissionError" in errors["python_grader_runtime_error_details"]


def test_the_test_process_keeps_working_after_hostile_graders(tmp_path):
    for name in ("forks in a loop", "allocates 10 GB", "opens a socket"):
        grade(HOSTILE[name][0], {"port": 1, "pid": os.getpid()})
    with socket.socket() as s:  # this process still has its network, processes and files
        s.bind(("127.0.0.1", 0))
    assert subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout == "42\n"
    (tmp_path / "still.txt").write_text("ok")
    assert open("/etc/passwd").read(1)


KERNEL_ONLY = """
import json, os, runpy, socket, sys
runner = runpy.run_path(sys.argv[1])
box, secret = sys.argv[2], sys.argv[3]
notes = runner["confine"](box, {"cpu_seconds": 10, "memory_bytes": 2 << 30, "file_bytes": 1 << 20}, os.getppid())
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return type(exc).__name__
print(json.dumps({"notes": notes,
    "read secret": attempt(lambda: open(secret).read()),
    "write outside": attempt(lambda: open(os.path.dirname(box) + "/outside.txt", "w").write("x")),
    "write box": attempt(lambda: open(box + "/inside.txt", "w").write("x")),
    "read stdlib": attempt(lambda: open(os.__file__).read()),
    "socket": attempt(lambda: socket.socket()),
    "fork": attempt(lambda: os.fork()),
    "signal parent": attempt(lambda: os.kill(os.getppid(), 0))}))
"""


def test_the_kernel_layers_hold_without_the_audit_hook(tmp_path, service_files):
    box = tmp_path / "box"
    box.mkdir()
    out = subprocess.run([sys.executable, "-I", "-S", "-c", KERNEL_ONLY, str(RUNNER), str(box),
                          str(service_files / "keys.txt")], capture_output=True, text=True, env={}, cwd=box, timeout=60)
    report = json.loads(out.stdout)
    if "NO landlock" in report["notes"] or "NO seccomp" in report["notes"]:
        pytest.skip(f"this kernel lacks a layer: {report['notes']}")
    assert report == {"notes": report["notes"], "read secret": "PermissionError", "write outside": "PermissionError",
                      "write box": "allowed", "read stdlib": "allowed", "socket": "PermissionError",
                      "fork": "PermissionError", "signal parent": "PermissionError"}
    assert not (tmp_path / "outside.txt").exists()
