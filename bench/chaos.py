"""The chaos suite at full size: N jobs of all three methods (supervised, dpo, reinforcement, in turn), each beside
an undisturbed control of the same seed, under K random SIGKILLs of their training processes (at random moments,
as a checkpoint folder appears, around reinforcement validations), pauses and resumes, and cancels of every
fifth job. Then each job is judged against its control (``tests/chaos.py`` lists the checks: exact per-step
metrics, the same final adapter, each step reported once, each checkpoint listed once, cancelled ones empty).
Also SIGKILLs the inference worker mid-answer ``--worker-kills`` times and checks the next chat answers.

    .venv/bin/python bench/chaos.py [--jobs 10] [--kills 50] [--seed 1] [--concurrent 4] [--timeout 3600]

Starts a real ``openft serve`` (the tests' tiny model, SQLite under a temporary directory). Prints the run's size,
kills by moment, and "exact: X/Y" (Y: jobs not cancelled), each problem found, and seconds. Exit status 1 if any
job is not exact. Bounded: the run stops at --timeout seconds.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos import SETTINGS, Chaos, create_pairs, judge, kill_all  # noqa: E402
from tests.conftest import Server, _kill_trainers  # noqa: E402
from tests.tinymodel import build_tiny_model  # noqa: E402


def worker_pids() -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            parts = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"openft.infer" in parts:
            pids.append(int(cmdline.parent.name))
    return pids


def kill_inference_workers(client, model: str, times: int, rng: random.Random) -> tuple[int, int]:
    """SIGKILL the inference worker while it answers a chat, ``times`` times; each time the next chat must answer.
    Returns (kills, chats answered after a kill)."""
    import threading

    import openai

    kills = answered = 0
    for _ in range(times):
        ask = threading.Thread(target=lambda: _chat(client, model, openai), daemon=True)
        ask.start()
        time.sleep(rng.uniform(0.0, 1.0))
        kills += kill_all(worker_pids()) > 0
        ask.join(timeout=120)
        answered += _chat(client, model, openai)
    return kills, answered


def _chat(client, model: str, openai) -> bool:
    try:
        reply = client.chat.completions.create(model=model, max_tokens=16,
                                               messages=[{"role": "user", "content": "What is item number 3?"}])
        return reply.choices[0].message is not None
    except openai.APIError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10, help="jobs under chaos (each with its own control)")
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs of training processes")
    parser.add_argument("--worker-kills", type=int, default=3, help="SIGKILLs of the inference worker")
    parser.add_argument("--concurrent", type=int, default=4, help="OPENFT_MAX_CONCURRENT_JOBS")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="openft-chaos-") as tmp:
        tmp = Path(tmp)
        server = Server(tmp / "data", f"sqlite:///{tmp / 'openft.db'}", {"tiny": str(build_tiny_model(tmp / "tiny"))},
                        **SETTINGS, max_concurrent_jobs=args.concurrent)
        server.data_dir.mkdir()
        server.start()
        try:
            client = server.client(timeout=120)
            pairs = create_pairs(client, args.jobs, rng, cancel_every=5)
            chaos = Chaos(client, server.data_dir, pairs, args.kills, rng, timeout=args.timeout)
            chaos.run()
            problems = {p.subject: judge(client, server.data_dir, p) for p in pairs}
            model = next((client.fine_tuning.jobs.retrieve(p.subject).fine_tuned_model for p in pairs
                          if not problems[p.subject] and not p.cancel), None)
            worker = kill_inference_workers(client, model, args.worker_kills, rng) if model else (0, 0)
            cancelled = sum(client.fine_tuning.jobs.retrieve(p.subject).status == "cancelled" for p in pairs)
        finally:
            server.stop(signal.SIGKILL)
            _kill_trainers(server.data_dir)
    exact = sum(not problems[p.subject] for p in pairs)
    print(f"jobs: {args.jobs} ({', '.join(f'{k} {sum(p.kind == k for p in pairs)}' for k in ('supervised', 'dpo', 'reinforcement'))}),"
          f" each beside a control; seed {args.seed}; {args.concurrent} trainers at once")
    print(f"trainer kills: {chaos.kills_done} of {args.kills} planned, by moment {chaos.moments}; "
          f"pauses: {sum(p.paused for p in pairs)}; cancelled: {cancelled}")
    print(f"inference worker kills: {worker[0]}, chats answered after them: {worker[1]}/{args.worker_kills}")
    print(f"exact: {exact}/{len(pairs)} (cancelled ones: cancelled with no checkpoint listed; others: the control's "
          f"per-step metrics and final adapter, each step once, each checkpoint once)")
    for p in pairs:
        for problem in problems[p.subject]:
            print(f"  {p.subject} ({p.kind}, {p.kills} kills): {problem}")
    print(f"seconds: {time.monotonic() - started:.0f}")
    return 0 if exact == len(pairs) and worker[1] == args.worker_kills else 1


if __name__ == "__main__":
    sys.exit(main())
