"""The chaos suite, small: a job of each method beside its control, their trainers SIGKILLed at random moments
(also as a checkpoint is written and around validations), paused and resumed; every job still ends with exactly
its control's per-step metrics and final adapter, each step reported once and each checkpoint listed once.
`bench/chaos.py` runs the same at full size."""

from __future__ import annotations

import random

import pytest

from tests.chaos import SETTINGS, Chaos, create_pairs, judge


@pytest.fixture
def database_url(tmp_path):  # one backend is enough here: the stores' writes are covered by the other suites
    return f"sqlite:///{tmp_path / 'openft.db'}"


def test_jobs_of_every_method_survive_random_kills_pauses_and_resumes_exactly(make_server):
    server = make_server(**SETTINGS, max_concurrent_jobs=4).start()
    client = server.client()
    rng = random.Random(13)
    pairs = create_pairs(client, 3, rng)
    chaos = Chaos(client, server.data_dir, pairs, kills=3, rng=rng, timeout=900)
    chaos.run()
    assert chaos.kills_done >= 2, chaos.kills_done  # the jobs ran long enough to be hit
    verdicts = {p.subject: judge(client, server.data_dir, p) for p in pairs}
    assert verdicts == {p.subject: [] for p in pairs}
