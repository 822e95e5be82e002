"""The chaos suite at full size: N jobs of all three methods (supervised, dpo, reinforcement, in turn), each beside
an undisturbed control of the same seed, under K random SIGKILLs of their training processes (at random moments,
as a checkpoint folder appears, around reinforcement validations), pauses and resumes, and cancels of every
fifth job. Then each job is judged against its control (``tests/chaos.py`` lists the checks: exact per-step
metrics, the same final adapter, each step reported once, each checkpoint listed once, cancelled ones empty).
Then SIGKILLs the inference worker mid-answer and a grader child (``python -m openft.graders``, a python grader
running) mid-run, ``--worker-kills`` times each, and checks that the next chat and grader run are answered.

    .venv/bin/python bench/chaos.py [--jobs 10] [--kills 50] [--worker-kills 3] [--seed 1] [--concurrent 4]
                                    [--timeout 3600]

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
import threading
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos import SETTINGS, Chaos, create_pairs, judge, kill_all, processes, rerun_steps  # noqa: E402
from tests.conftest import Server, _kill_trainers  # noqa: E402
from tests.tinymodel import build_tiny_model  # noqa: E402


SLOW_GRADER = {"type": "python", "name": "slow", "source": "import time\ndef grade(sample, item):\n"
               "    time.sleep(2)\n    return 1.0\n"}


def kill_mid_request(ask, module: bytes, times: int, rng: random.Random) -> tuple[int, int]:
    """``times`` times: start ``ask()`` (a request the API serves with a ``python -m <module>`` child), SIGKILL
    that child at a random moment, then ask again. Returns (kills, requests answered right after a kill)."""
    kills = answered = 0
    for _ in range(times):
        first = threading.Thread(target=ask, daemon=True)
        first.start()
        until = time.time() + 30
        while time.time() < until and not processes(module):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        kills += kill_all([pid for pid, _ in processes(module)]) > 0
        first.join(timeout=120)
        answered += ask()
    return kills, answered


def answers(call) -> bool:
    try:
        call()
        return True
    except openai.APIError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10, help="jobs under chaos (each with its own control)")
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs of training processes")
    parser.add_argument("--worker-kills", type=int, default=3,
                        help="SIGKILLs of the inference worker, and of grader children, each mid-request")
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
            # About 6 steps an epoch, two epochs per kill a job gets: a job is disrupted only after it progressed,
            # and a killed trainer takes seconds to train again, so shorter jobs end before their kills land.
            epochs = max(2, 2 * -(-args.kills // args.jobs))
            pairs = create_pairs(client, args.jobs, rng, cancel_every=5, epochs=epochs)
            chaos = Chaos(client, server.data_dir, pairs, args.kills, rng, timeout=args.timeout)
            try:
                chaos.run()
            except AssertionError as exc:  # bounded: judge what there is (unfinished jobs count as not exact)
                print(exc)
            problems = {p.subject: judge(client, server.data_dir, p) for p in pairs}
            model = next((client.fine_tuning.jobs.retrieve(p.subject).fine_tuned_model for p in pairs
                          if not problems[p.subject] and not p.cancel), None)
            chat = lambda: answers(lambda: client.chat.completions.create(  # noqa: E731
                model=model, max_tokens=16, messages=[{"role": "user", "content": "What is item number 3?"}]))
            grade = lambda: answers(lambda: client.post(  # noqa: E731
                "/fine_tuning/alpha/graders/run", cast_to=object,
                body={"grader": SLOW_GRADER, "model_sample": "item 3", "item": {}}))
            worker = kill_mid_request(chat, b"openft.infer", args.worker_kills, rng) if model else (0, 0)
            grader = kill_mid_request(grade, b"openft.graders", args.worker_kills, rng)
            cancelled = sum(client.fine_tuning.jobs.retrieve(p.subject).status == "cancelled" for p in pairs)
            reruns = sum(len(rerun_steps(server.data_dir, p.subject)) for p in pairs)
        finally:
            server.stop(signal.SIGKILL)
            _kill_trainers(server.data_dir)
    exact = sum(not problems[p.subject] for p in pairs)
    kinds = ", ".join(f"{k} {sum(p.kind == k for p in pairs)}" for k in ("supervised", "dpo", "reinforcement"))
    print(f"jobs: {args.jobs} ({kinds}; {epochs} epochs each), each beside a control; seed {args.seed}; "
          f"{args.concurrent} trainers at once")
    print(f"trainer kills: {chaos.kills_done} of {args.kills} planned, by moment {chaos.moments}; "
          f"pauses: {sum(p.paused for p in pairs)}; cancelled: {cancelled}; steps trained again after a kill "
          f"(reported once each): {reruns}")
    print(f"inference worker kills: {worker[0]}, chats answered right after: {worker[1]}/{args.worker_kills}; "
          f"grader child kills: {grader[0]}, grader runs answered right after: {grader[1]}/{args.worker_kills}")
    print(f"exact: {exact}/{len(pairs)} (cancelled ones: cancelled with no checkpoint listed; others: the control's "
          f"per-step metrics and final adapter, each step once, each checkpoint once)")
    for p in pairs:
        for problem in problems[p.subject]:
            print(f"  {p.subject} ({p.kind}, {p.kills} kills): {problem}")
    print(f"seconds: {time.monotonic() - started:.0f}")
    return 0 if exact == len(pairs) and worker[1] == grader[1] == args.worker_kills else 1


if __name__ == "__main__":
    sys.exit(main())
