"""Training on a real local Ray cluster (a head that runs no attempts, and two worker nodes with their own custom
resources) through the API: an attempt runs on the node its resources ask for, and when the node running an attempt
dies the job finishes on the other node with the results of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import Server, _kill_trainers
from tests.helpers import (FUZZY_GRADER, all_events, chat_rows, preference_rows, reinforcement_rows, upload, wait_for,
                           wait_for_step)
from tests.chaos import trainer_pids

RAY = str(Path(sys.executable).with_name("ray"))
HP = {"n_epochs": 3, "batch_size": 1}  # 12 examples: 12 steps an epoch, 36 in all


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """`ray start --head` plus one `ray start --address` per worker node, each with its own node-manager port (to
    find and kill its raylet) and a custom resource naming it."""

    def __init__(self):
        self.temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
        self.address = f"127.0.0.1:{_free_port()}"
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.manager_ports: dict[str, int] = {}

    def ray(self, *args: str) -> None:
        subprocess.run([RAY, *args], env=self.env, check=True, capture_output=True, timeout=180)

    def start(self) -> "Cluster":
        port = self.address.rsplit(":", 1)[1]
        self.ray("start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=0",
                 "--include-dashboard=false", f"--temp-dir={self.temp}", "--disable-usage-stats")
        for name in ("node_b", "node_c"):
            self.manager_ports[name] = _free_port()
            self.ray("start", f"--address={self.address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                     f"--resources={{\"{name}\": 1}}", f"--node-manager-port={self.manager_ports[name]}")
        return self

    def node_ids(self) -> dict[str, str]:
        """Node name → Ray node id, asked of the cluster in a separate process (the test process stays Ray-free)."""
        code = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
                "print(json.dumps({k: n['NodeID'] for n in ray.nodes() if n['Alive'] for k in n['Resources'] "
                "if k.startswith('node_')}))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.env, check=True, capture_output=True, text=True,
                             timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def kill_node(self, name: str) -> None:
        """Lose the node as a machine is lost: SIGKILL its raylet and every process under it (its Ray workers and
        the trainers they started)."""
        flag = f"--node_manager_port={self.manager_ports[name]}".encode()
        parents = {}
        raylet = None
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
                parts = (stat.parent / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            pid = int(stat.parent.name)
            parents[pid] = int(text[text.rindex(")") + 2:].split()[1])
            if parts and parts[0].endswith(b"raylet") and flag in parts:
                raylet = pid
        assert raylet is not None, f"no raylet for {name}"
        doomed = {raylet}
        while grown := {pid for pid, ppid in parents.items() if ppid in doomed} - doomed:
            doomed |= grown
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        subprocess.run([RAY, "stop", "--force"], env=self.env, capture_output=True, timeout=120)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture
def ray_server(cluster, tmp_path, tiny_model):
    servers = []

    def make(**settings) -> Server:
        server = Server(tmp_path / "data", f"sqlite:///{tmp_path / 'openft.db'}", {"tiny": str(tiny_model)},
                        executor="ray", ray_address=cluster.address, **settings)
        server.data_dir.mkdir(exist_ok=True)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop(signal.SIGKILL)
    _kill_trainers(tmp_path / "data")


def _attempt_nodes(server: Server, job_id: str) -> dict[int, str]:
    nodes = {}
    for log in (server.data_dir / "jobs" / job_id).glob("attempt-*.log"):
        match = re.search(r"attempt (\d+) on Ray node (\w+)", log.read_text(errors="replace"))
        nodes[int(match.group(1))] = match.group(2)
    return nodes


def _start(client, seed: int = 99, hyperparameters: dict = HP):
    train = upload(client, chat_rows(12))
    return client.fine_tuning.jobs.create(model="tiny", training_file=train, seed=seed, hyperparameters=hyperparameters)


def _results_csv(client, job_id: str) -> bytes:
    job = client.fine_tuning.jobs.retrieve(job_id)
    return client.files.content(job.result_files[0]).read()


def test_an_sft_job_runs_on_the_ray_node_its_resources_ask_for_and_pauses_and_resumes_there(cluster, ray_server):
    server = ray_server(ray_resources='{"node_c": 1}')
    client = server.client()
    job = _start(client)
    wait_for_step(client, job.id, 3, timeout=300)
    client.fine_tuning.jobs.pause(job.id)  # reaches the trainer through its actor
    wait_for(client, job.id, "paused")
    client.fine_tuning.jobs.resume(job.id)
    wait_for(client, job.id, "succeeded", timeout=300)
    node_c = cluster.node_ids()["node_c"]
    assert _attempt_nodes(server, job.id) == {1: node_c, 2: node_c}


def test_cancel_reaches_a_ray_attempt_which_stops_and_leaves_no_checkpoints(ray_server):
    server = ray_server(cancel_grace_seconds=60)
    client = server.client()
    job = _start(client)
    wait_for_step(client, job.id, 13, timeout=300)  # an epoch checkpoint exists
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data
    client.fine_tuning.jobs.cancel(job.id)
    deadline = time.time() + 60
    while time.time() < deadline and (client.fine_tuning.jobs.checkpoints.list(job.id).data
                                      or trainer_pids(server.data_dir, job.id)):
        time.sleep(0.2)
    # the trainer stopped (within the grace period: on the cancel, not a kill)
    assert trainer_pids(server.data_dir, job.id) == []
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []
    result = json.loads((server.data_dir / "jobs" / job.id / "result.json").read_text())
    assert result == {"status": "cancelled"}  # it ended on its own, at the cancel


def test_dpo_and_rft_jobs_run_on_the_asked_node_one_waiting_for_it_while_the_other_runs(cluster, ray_server):
    server = ray_server(ray_resources='{"node_b": 1}', max_concurrent_jobs=2)  # node_b has room for one attempt
    client = server.client()
    dpo = client.fine_tuning.jobs.create(
        model="tiny", training_file=upload(client, preference_rows(10)), seed=1,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}})
    rft = client.fine_tuning.jobs.create(
        model="tiny", training_file=upload(client, reinforcement_rows(10)), seed=1,
        method={"type": "reinforcement", "reinforcement": {"grader": FUZZY_GRADER, "hyperparameters": {
            "n_epochs": 1, "batch_size": 2, "compute_multiplier": 0.5, "reasoning_effort": "low"}}})
    for job in (dpo, rft):
        wait_for(client, job.id, "succeeded", timeout=400)
    node_b = cluster.node_ids()["node_b"]
    assert _attempt_nodes(server, dpo.id) == {1: node_b} and _attempt_nodes(server, rft.id) == {1: node_b}


def test_killing_the_node_running_an_attempt_finishes_the_job_on_the_other_node_with_equal_results(
        cluster, ray_server):
    server = ray_server()
    client = server.client()
    longer = {**HP, "n_epochs": 6}  # 72 steps: the kill lands well before the end even on a fast node
    control = _start(client, hyperparameters=longer)
    wait_for(client, control.id, "succeeded", timeout=300)

    nodes = cluster.node_ids()
    job = _start(client, hyperparameters=longer)
    wait_for_step(client, job.id, 13, timeout=300)  # past the epoch-1 checkpoint at step 12
    first = _attempt_nodes(server, job.id)[1]
    lost = next(name for name, node in nodes.items() if node == first)
    cluster.kill_node(lost)
    wait_for(client, job.id, "succeeded", timeout=300)

    attempts = _attempt_nodes(server, job.id)
    survivor = next(node for name, node in nodes.items() if name != lost)
    assert attempts == {1: first, 2: survivor}
    recovered = [e.message for e in all_events(client, job.id) if e.level == "warn"]
    assert len(recovered) == 1 and "lost its node" in recovered[0]
    # It resumed from an epoch checkpoint the lost node had written (step 12 or, on a fast node, a later epoch's).
    resumed = re.search(r"resuming from the checkpoint at step (\d+)", recovered[0])
    assert resumed and int(resumed.group(1)) in (12, 24, 36, 48, 60)
    assert _results_csv(client, job.id) == _results_csv(client, control.id)


def test_an_attempt_asks_ray_for_the_memory_of_the_weights_it_trains(tiny_model):
    from transformers import AutoModelForCausalLM

    from openft.executors.ray import RUNTIME_BYTES, attempt_memory

    parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters())  # tied once
    lora = {"base_model_path": str(tiny_model), "lora": {"r": 8, "alpha": 16, "dropout": 0.05}}
    assert attempt_memory(lora) == 4 * parameters + RUNTIME_BYTES
    assert attempt_memory({**lora, "lora": None}) == 16 * parameters + RUNTIME_BYTES  # + gradients, Adam's moments
    assert attempt_memory({**lora, "base_model_path": str(tiny_model / "missing")}) is None
