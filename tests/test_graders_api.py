"""The graders API through the official openai SDK against the real service: run and validate under both prefixes,
a 400 naming the field of a bad grader, model graders sampling the configured endpoint, and an API process that
stays free of torch while the cosine metric runs."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.test_graders import FakeChat

MULTI = {"type": "multi", "name": "answer", "calculate_output": "0.5 * exact + 0.5 * overlap",
         "graders": {"exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_json.city}}",
                               "reference": "{{item.city}}", "operation": "eq"},
                     "overlap": {"type": "text_similarity", "name": "overlap", "input": "{{sample.output_text}}",
                                 "reference": "{{item.reference}}", "evaluation_metric": "rouge_1"}}}
PYTHON = {"type": "python", "name": "length",
          "source": "def grade(sample, item):\n    return min(1.0, len(sample['output_text']) / item['n'])\n"}


def test_graders_run_through_the_sdk_under_both_prefixes(server):
    for prefix in ("/v1", "/api/v1/llm"):
        graders = server.client(prefix).fine_tuning.alpha.graders
        result = graders.run(grader=MULTI, model_sample='{"city": "Paris"}',
                             item={"city": "Paris", "reference": "Paris"})
        # rouge_1 of '{"city": "Paris"}' against "Paris": tokens city, paris vs paris, so F = 2/3
        assert result.sub_rewards == pytest.approx({"exact": 1.0, "overlap": 2 / 3})
        assert result.reward == pytest.approx(0.5 + 0.5 * 2 / 3)
        assert result.metadata.type == "multi" and result.metadata.name == "answer"
        assert not result.metadata.errors.formula_parse_error and result.metadata.execution_time > 0
        result = graders.run(grader=PYTHON, model_sample="abcd", item={"n": 8})
        assert result.reward == 0.5 and not result.metadata.errors.python_grader_runtime_error
    bad = server.client().fine_tuning.alpha.graders.run(
        grader={**PYTHON, "source": "def grade(sample, item):\n    return open('/etc/passwd').read()\n"},
        model_sample="x")
    assert bad.reward == 0.0 and bad.metadata.errors.python_grader_runtime_error
    assert "PermissionError" in bad.metadata.errors.python_grader_runtime_error_details


def test_validate_echoes_a_good_grader_and_a_bad_one_is_a_400_naming_the_field(server):
    for prefix in ("/v1", "/api/v1/llm"):
        graders = server.client(prefix).fine_tuning.alpha.graders
        assert graders.validate(grader=PYTHON).grader.source == PYTHON["source"]
        cases = [({**MULTI["graders"]["overlap"], "evaluation_metric": "bleu4"}, "grader.evaluation_metric"),
                 ({**MULTI, "calculate_output": "__import__('os').system('id')"}, "grader.calculate_output"),
                 ({**PYTHON, "source": "x = ("}, "grader.source")]
        for grader, param in cases:
            for call in (lambda: graders.validate(grader=grader), lambda: graders.run(grader=grader, model_sample="x")):
                with pytest.raises(openai.BadRequestError) as err:
                    call()
                assert err.value.status_code == 400 and err.value.param == param, err.value.message
    with pytest.raises(openai.BadRequestError) as err:  # the body itself: model_sample is required
        server.client().post("/fine_tuning/alpha/graders/run", body={"grader": PYTHON}, cast_to=object)
    assert err.value.param == "model_sample"


def test_model_graders_sample_the_configured_endpoint_and_cosine_runs_outside_the_api_process(make_server):
    upstream = FakeChat({"judge": '{"steps": [], "result": 0.9}', "labeller": '{"result": "pass"}'})
    try:
        server = make_server(grader_model_base_url=upstream.url, grader_model_api_key="sk-up").start()
        grader = {"type": "multi", "name": "m", "calculate_output": "judge * verdict * similar",
                  "graders": {"judge": {"type": "score_model", "name": "judge", "model": "judge",
                                        "input": [{"role": "user", "content": "Grade {{sample.output_text}}"}]},
                              "verdict": {"type": "label_model", "name": "verdict", "model": "labeller",
                                          "input": [{"role": "user", "content": "Label {{sample.output_text}}"}],
                                          "labels": ["pass", "fail"], "passing_labels": ["pass"]},
                              "similar": {"type": "text_similarity", "name": "similar", "input": "{{sample.output_text}}",
                                          "reference": "{{item.reference}}", "evaluation_metric": "cosine"}}}
        result = server.client().fine_tuning.alpha.graders.run(grader=grader, model_sample="A man is eating food.",
                                                               item={"reference": "A man is eating food."})
        assert result.reward == pytest.approx(0.9, abs=1e-4)
        assert set(result.model_grader_token_usage_per_model) == {"judge", "labeller"}
        assert {r["auth"] for r in upstream.requests} == {"Bearer sk-up"}
        assert "Grade A man is eating food." in str(upstream.requests[0]["body"]["messages"])
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
        assert "libtorch" not in maps  # the cosine metric ran in a grading child process
    finally:
        upstream.close()


def test_hostile_python_graders_through_the_api_leave_the_service_serving(server, tmp_path):
    """The same hostile graders as the sandbox tests, aimed at the running service itself: its database, its data
    folder, its process (the grader's grandparent) and its port. Each scores 0 with its flag; the service serves."""
    from tests.test_python_grader_sandbox import HOSTILE

    client = server.client()
    file_id = client.files.create(file=("a.jsonl", b'{"a": 1}\n'), purpose="fine-tune").id
    item = {"db": str(server.data_dir / "openft.db"), "keys": str(server.data_dir / "openft.db"),
            "dir": str(server.data_dir), "pid": server.proc.pid, "port": server.port,
            "outside": str(tmp_path / "outside.txt")}
    for name in ("reads the service database", "queries the service database", "lists the data directory",
                 "reads the parent's environment", "opens a socket", "forks in a loop", "kills its parent",
                 "allocates 10 GB", "writes outside its folder"):
        source, flag, _ = HOSTILE[name]
        result = client.fine_tuning.alpha.graders.run(grader={"type": "python", "name": "h", "source": source},
                                                      model_sample="x", item=item)
        assert result.reward == 0 and getattr(result.metadata.errors, flag), name
        assert client.files.retrieve(file_id).id == file_id, name  # still serving, data intact
    assert server.proc.poll() is None and not (tmp_path / "outside.txt").exists()


def test_model_graders_sample_this_service_itself_by_default(server):
    """Without OPENFT_GRADER_MODEL_BASE_URL a score_model grader samples the service's own models on the port it
    serves (here a random one, not 8000): the tiny model answers, whatever the score it gives."""
    grader = {"type": "score_model", "name": "judge", "model": "tiny", "range": [0, 1],
              "input": [{"role": "user", "content": "Score this answer: {{sample.output_text}}"}]}
    result = server.client().fine_tuning.alpha.graders.run(grader=grader, model_sample="Paris")
    assert result.metadata.sampled_model_name == "tiny" and result.metadata.token_usage > 0
