"""What does running attempts on Ray cost, and how soon does a job run again after its node dies?

    .venv/bin/python bench/ray_executor.py [--examples 48] [--epochs 2]

On this machine it starts a local Ray cluster (a head that runs no training and two worker nodes, temp files under
/tmp, stopped at the end) and two `openft serve` processes, one with the local executor and one with the Ray
executor, and trains the same SFT job (the tests' tiny model, the same seed) on each, alternately `--repeats` times:
it prints the best wall time (create → succeeded) of each and their ratio. Then it trains the job again on Ray, kills the node running it after the
first epoch's checkpoint, and prints the seconds from the node's death to the resumed attempt's first record.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import Server, _kill_trainers  # noqa: E402
from tests.helpers import all_events, chat_rows, upload, wait_for, wait_for_step  # noqa: E402
from tests.test_ray import Cluster, _attempt_nodes  # noqa: E402
from tests.tinymodel import build_tiny_model  # noqa: E402


def timed_job(server: Server, rows: list[dict], hp: dict) -> float:
    client = server.client()
    train = upload(client, rows)
    start = time.time()
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train, seed=5, hyperparameters=hp)
    wait_for(client, job.id, "succeeded", timeout=1800)
    return time.time() - start


def node_death_to_running(cluster: Cluster, server: Server, rows: list[dict], hp: dict, epoch_steps: int) -> float:
    client = server.client()
    nodes = cluster.node_ids()
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, rows), seed=5, hyperparameters=hp)
    wait_for_step(client, job.id, epoch_steps + 1, timeout=1800)
    first = _attempt_nodes(server, job.id)[1]
    cluster.kill_node(next(name for name, node in nodes.items() if node == first))
    died = time.time()
    while time.time() - died < 600:
        if any(e.message.startswith("Resuming from checkpoint") for e in all_events(client, job.id)):
            return time.time() - died
        time.sleep(0.2)
    raise RuntimeError("the job did not run again within 600 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows, hp = chat_rows(args.examples), {"n_epochs": args.epochs, "batch_size": 1}
    work = Path(tempfile.mkdtemp(prefix="openft-bench-ray-"))
    models = {"tiny": str(build_tiny_model(work / "tiny"))}
    cluster = Cluster().start()
    servers = []
    try:
        for name, settings in (("local", {}), ("ray", {"executor": "ray", "ray_address": cluster.address})):
            (work / name).mkdir()
            servers.append(Server(work / name, f"sqlite:///{work / name / 'openft.db'}", models, **settings).start())
        times = [[timed_job(s, rows, hp) for s in servers] for _ in range(args.repeats)]
        local, ray = (min(column) for column in zip(*times))
        print(f"same job ({args.examples} examples, {args.epochs} epochs): local {local:.1f} s, Ray {ray:.1f} s, "
              f"ratio {ray / local:.2f}")
        gap = node_death_to_running(cluster, servers[1], rows, hp, args.examples)
        print(f"node death → the job training again on the other node: {gap:.1f} s")
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)
            _kill_trainers(server.data_dir)
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
