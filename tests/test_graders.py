"""The RFT graders as plain functions: every grader type, every similarity metric against known values, templates,
the calculate_output language (and what it refuses), validation naming the bad field, and the model graders
against a small OpenAI-compatible HTTP server that stands in for an upstream endpoint."""

from __future__ import annotations

import doctest
import importlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from openft.errors import InvalidRequest
from openft.graders import Endpoint, make_sample, run_grader, validate_grader
from openft.graders.formula import FormulaError, evaluate, parse
from openft.graders.outcome import FLAGS

MODULES = ["templates", "outcome", "formula", "validate", "similarity", "model", "run", "sandbox", "embeddings"]


def text_similarity(metric: str, input: str = "{{sample.output_text}}", reference: str = "{{item.reference}}") -> dict:
    return {"type": "text_similarity", "name": metric, "input": input, "reference": reference,
            "evaluation_metric": metric}


def reward(grader: dict, output: str, item: dict | None = None, **kw) -> float:
    result = run_grader(grader, make_sample(output), item or {}, **kw)
    assert not any(result["metadata"]["errors"][f] for f in FLAGS), result["metadata"]["errors"]
    return result["reward"]


def raised(result: dict) -> list[str]:
    return [flag for flag in FLAGS if result["metadata"]["errors"][flag]]


@pytest.mark.parametrize("module", MODULES)
def test_the_worked_examples_in_each_graders_docstrings_hold(module):
    failed, attempted = doctest.testmod(importlib.import_module(f"openft.graders.{module}"))
    assert attempted > 0 and failed == 0


@pytest.mark.parametrize("operation, output, reference, expected", [
    ("eq", "Paris", "Paris", 1.0), ("eq", "Paris", "paris", 0.0), ("eq", "Paris ", "Paris", 0.0),
    ("ne", "Paris", "Rome", 1.0), ("ne", "Paris", "Paris", 0.0),
    ("like", "The capital is Paris.", "Paris", 1.0), ("like", "the capital is paris.", "Paris", 0.0),
    ("ilike", "THE CAPITAL IS PARIS.", "paris", 1.0), ("ilike", "Rome", "paris", 0.0),
])
def test_string_check_compares_as_openai_does(operation, output, reference, expected):
    grader = {"type": "string_check", "name": "s", "input": "{{ sample.output_text }}",
              "reference": "{{item.answer}}", "operation": operation}
    assert reward(grader, output, {"answer": reference}) == expected


CAT, MAT = "the cat is on the mat", "the cat sat on the mat"


@pytest.mark.parametrize("metric, output, reference, expected", [
    ("fuzzy_match", "The quick brown fox", "the quick brown fox!", 1.0),
    ("fuzzy_match", "hello world", "goodbye moon", 0.2609),
    ("bleu", MAT, MAT, 1.0),
    ("bleu", CAT, MAT, 0.3799),
    ("gleu", CAT, MAT, 0.5),  # 9 of 18 n-grams (1- to 4-grams) shared, both ways
    ("meteor", "It is a guide to action which ensures that the military always obeys the commands of the party",
     "It is a guide to action that ensures that the military will forever heed Party commands", 0.6944),  # NLTK's own example
    ("meteor", "the auto is red", "the car is red", 0.9922),  # a WordNet synonym: one chunk of four matches
    ("meteor", "the banana is red", "the car is red", 0.6389),
    ("rouge_1", CAT, MAT, 0.8333), ("rouge_2", CAT, MAT, 0.6), ("rouge_3", CAT, MAT, 0.25),
    ("rouge_4", CAT, MAT, 0.0), ("rouge_5", "a b c d e f", "a b c d e g", 0.5),
    ("rouge_l", "the mat sat on the cat", MAT, 0.6667),
    ("cosine", "A man is eating food.", "A man is eating food.", 1.0),
    ("cosine", "A man is eating food.", "A man is eating a piece of bread.", 0.7553),  # = sentence-transformers
    ("cosine", "A man is eating food.", "A monkey is playing drums.", 0.0476),
])
def test_text_similarity_metrics_match_known_values(metric, output, reference, expected):
    assert reward(text_similarity(metric), output, {"reference": reference}) == pytest.approx(expected, abs=1e-4)


def test_templates_reach_item_fields_json_output_and_tool_calls_by_path():
    sample = make_sample('{"city": "Paris", "stops": [{"name": "Lyon"}]}',
                         tool_calls=[{"id": "c1", "type": "function",
                                      "function": {"name": "get_weather", "arguments": "{}"}}])
    item = {"trip": {"cities": ["Nice", "Lyon"]}, "n": 2}
    cases = [("{{sample.output_json.city}}", "Paris"), ("{{ sample.output_json.stops[0].name }}", "Lyon"),
             ("{{sample.output_tools[0].function.name}}", "get_weather"), ("{{item.trip.cities[1]}}", "Lyon"),
             ("{{item.n}} stops via {{item.trip.cities}}", '2 stops via ["Nice", "Lyon"]')]
    for template, expected in cases:
        grader = {"type": "string_check", "name": "t", "input": template, "reference": expected, "operation": "eq"}
        assert run_grader(grader, sample, item)["reward"] == 1.0, template


def test_a_missing_reference_or_non_json_sample_scores_zero_with_its_flag():
    grader = {"type": "string_check", "name": "t", "input": "{{item.missing}}", "reference": "x", "operation": "eq"}
    result = run_grader(grader, make_sample("x"), {"present": 1})
    assert result["reward"] == 0.0 and raised(result) == ["invalid_variable_error"]
    grader["input"] = "{{sample.output_json.city}}"
    result = run_grader(grader, make_sample("not json"), {})
    assert result["reward"] == 0.0 and raised(result) == ["sample_parse_error"]


def test_run_response_has_openais_shape():
    result = run_grader(text_similarity("rouge_1"), make_sample(CAT), {"reference": MAT})
    assert set(result) == {"reward", "metadata", "sub_rewards", "model_grader_token_usage_per_model"}
    meta = result["metadata"]
    assert meta["name"] == "rouge_1" and meta["type"] == "text_similarity" and meta["execution_time"] >= 0
    assert meta["token_usage"] is None and meta["sampled_model_name"] is None and meta["scores"] == {}
    assert set(meta["errors"]) == set(FLAGS) | {"python_grader_server_error_type", "python_grader_runtime_error_details",
                                               "model_grader_server_error_details"}


def test_python_grader_scores_the_sample():
    source = "import json\ndef grade(sample, item):\n    print('noise')\n    return float(sample['output_json']['n'] == item['n'])\n"
    assert reward({"type": "python", "name": "p", "source": source}, '{"n": 3}', {"n": 3}) == 1.0


# ---- multi and calculate_output -------------------------------------------------------------------------------------

MULTI = {"type": "multi", "name": "combined", "calculate_output": "0.5 * exact + 0.5 * fuzzy",
         "graders": {"exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                               "reference": "{{item.answer}}", "operation": "eq"},
                     "fuzzy": text_similarity("rouge_1", reference="{{item.answer}}")}}


def test_multi_combines_its_graders_with_calculate_output():
    result = run_grader(MULTI, make_sample(CAT), {"answer": MAT})
    assert result["sub_rewards"] == pytest.approx({"exact": 0.0, "fuzzy": 0.8333}, abs=1e-4)
    assert result["reward"] == pytest.approx(0.5 * 0.8333, abs=1e-4) and raised(result) == []


def test_multi_with_a_failing_grader_scores_zero_and_keeps_the_flag():
    broken = {**MULTI, "graders": {**MULTI["graders"], "exact": {**MULTI["graders"]["exact"], "reference": "{{item.nope}}"}}}
    result = run_grader(broken, make_sample(MAT), {"answer": MAT})
    assert result["reward"] == 0.0 and raised(result) == ["invalid_variable_error"]
    assert result["sub_rewards"]["fuzzy"] == 1.0


@pytest.mark.parametrize("formula, expected", [
    ("1 + 2 * 3", 7.0), ("(1 + 2) * 3", 9.0), ("2 ^ 3 ^ 2", 512.0), ("-2 ^ 2", -4.0), ("2 ^ -1", 0.5),
    ("a - b - c", -4.0), ("a / b / c", 1 / 6), ("min(a, b, c) + max(a, 0.5)", 2.0), ("abs(-a) + floor(2.7) + ceil(0.2)", 4.0),
    ("exp(0) + sqrt(16) + log(1)", 5.0), ("1e-1 * 10 + .5", 1.5), ("--a", 1.0),
])
def test_calculate_output_follows_arithmetic_precedence(formula, expected):
    assert evaluate(formula, {"a": 1.0, "b": 2.0, "c": 3.0}) == pytest.approx(expected)


@pytest.mark.parametrize("formula, says", [
    ("__import__('os')", "unexpected \"'\""), ("a.__class__", "unexpected '.'"), ("(1).real", "unexpected '.'"),
    ("a[0]", "unexpected '['"), ("lambda: 1", "unexpected ':'"), ("open(1)", "unknown function 'open'"),
    ("a if b else c", "unexpected 'if'"), ("a ** 2", "expected a value"), ("a = 1", "unexpected '='"),
    ("max()", "expected a value"), ("sqrt(1, 2)", "takes one argument"), ("1 +", "expected a value"),
    ("(" * 60 + "1" + ")" * 60, "nests deeper"), ("2^" * 60 + "2", "nests deeper"), ("1+" * 1500 + "1", "longer than"),
    ("", "non-empty"),
])
def test_calculate_output_refuses_anything_but_arithmetic(formula, says):
    with pytest.raises(FormulaError, match=re.escape(says)):
        parse(formula)


def test_huge_exponents_fail_fast_instead_of_computing():
    started = time.perf_counter()
    for formula in ("9^9^9^9", "10^400", "exp(1000)", "2^1e10", "1/0", "log(0)", "sqrt(-1)"):
        with pytest.raises(FormulaError):
            evaluate(formula, {})
    assert time.perf_counter() - started < 0.5
    result = run_grader({**MULTI, "calculate_output": "exact / (fuzzy - fuzzy)"}, make_sample(MAT), {"answer": MAT})
    assert result["reward"] == 0.0 and raised(result) == ["formula_parse_error"]


# ---- validation -----------------------------------------------------------------------------------------------------

def _multi_with(**changes):
    return {**MULTI, **changes}


@pytest.mark.parametrize("grader, param", [
    ("not an object", "grader"),
    ({"type": "regex", "name": "x"}, "grader.type"),
    ({"type": "label_model", "name": "x", "model": "m", "input": [], "labels": ["a"], "passing_labels": ["a"]}, "grader.type"),
    ({**text_similarity("bleu"), "evaluation_metric": "bleu4"}, "grader.evaluation_metric"),
    ({**text_similarity("bleu"), "evaluation_metrics": "bleu"}, "grader.evaluation_metrics"),
    ({**text_similarity("bleu"), "pass_threshold": "high"}, "grader.pass_threshold"),
    ({k: v for k, v in text_similarity("bleu").items() if k != "name"}, "grader.name"),
    ({"type": "string_check", "name": "s", "input": "{{answer}}", "reference": "x", "operation": "eq"}, "grader.input"),
    ({"type": "string_check", "name": "s", "input": "{{sample.text}}", "reference": "x", "operation": "eq"}, "grader.input"),
    ({"type": "string_check", "name": "s", "input": "x", "reference": "x", "operation": "neq"}, "grader.operation"),
    ({"type": "python", "name": "p", "source": "def grade(sample, item):\n  return (\n"}, "grader.source"),
    ({"type": "python", "name": "p", "source": "def score(sample, item):\n  return 1\n"}, "grader.source"),
    ({"type": "python", "name": "p", "source": "def grade(s, i):\n  return 1\n" + "#" * 262_144}, "grader.source"),
    ({"type": "score_model", "name": "m", "model": "", "input": [{"role": "user", "content": "x"}]}, "grader.model"),
    ({"type": "score_model", "name": "m", "model": "g", "input": [{"role": "robot", "content": "x"}]}, "grader.input[0].role"),
    ({"type": "score_model", "name": "m", "model": "g", "input": [{"role": "user", "content": "x"}], "range": [1, 0]}, "grader.range"),
    ({"type": "score_model", "name": "m", "model": "g", "input": [{"role": "user", "content": "x"}],
      "sampling_params": {"temperature": "hot"}}, "grader.sampling_params.temperature"),
    ({"type": "score_model", "name": "m", "model": "g",
      "input": [{"role": "user", "content": [{"type": "input_video", "url": "x"}]}]}, "grader.input[0].content[0]"),
    (_multi_with(calculate_output="exact + missing"), "grader.calculate_output"),
    (_multi_with(calculate_output="__import__('os')"), "grader.calculate_output"),
    (_multi_with(graders={"a-b": MULTI["graders"]["exact"]}), "grader.graders.a-b"),
    (_multi_with(graders={"inner": MULTI}), "grader.graders.inner.type"),
    (_multi_with(graders={**MULTI["graders"], "exact": {**MULTI["graders"]["exact"], "operation": "is"}}),
     "grader.graders.exact.operation"),
    (_multi_with(graders={"exact": MULTI["graders"]["exact"], "fuzzy": {
        "type": "label_model", "name": "l", "model": "g", "input": [{"role": "user", "content": "x"}],
        "labels": ["yes", "no"], "passing_labels": ["maybe"]}}), "grader.graders.fuzzy.passing_labels"),
])
def test_validation_names_the_bad_field(grader, param):
    with pytest.raises(InvalidRequest) as err:
        validate_grader(grader)
    assert err.value.param == param, err.value.message


def test_a_valid_grader_is_echoed_unchanged():
    assert validate_grader(MULTI) == MULTI and validate_grader(MULTI) is not MULTI


# ---- score_model and label_model ----------------------------------------------------------------------------------

class FakeChat:
    """A tiny OpenAI-compatible chat completions endpoint: ``replies[model]`` is the content it answers, or an int
    HTTP status to fail with, or ``{"refusal": text}``. It records every request body and Authorization header."""

    def __init__(self, replies: dict):
        self.replies, self.requests = replies, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                reply = fake.replies[body["model"]]
                if isinstance(reply, int):
                    return self._send(reply, {"error": {"message": "upstream is down", "type": "server_error"}})
                message = {"role": "assistant", "content": None, **reply} if isinstance(reply, dict) else \
                    {"role": "assistant", "content": reply}
                self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}})

            def _send(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def upstream():
    fake = FakeChat({"judge": '{"steps": [{"description": "checked", "conclusion": "close"}], "result": 0.8}',
                     "generous": '{"result": 7}', "bare": " 0.25 ", "chatty": "I think it is fine.",
                     "labeller": '{"result": "Correct"}', "wrong-label": '{"result": "maybe"}', "down": 503,
                     "refuser": {"refusal": "I can't help with that."}})
    yield fake
    fake.close()


def score_model(model: str, **extra) -> dict:
    return {"type": "score_model", "name": "judge", "model": model,
            "input": [{"role": "system", "content": "Score the answer against {{item.reference}}."},
                      {"role": "user", "content": [{"type": "input_text", "text": "Answer: {{sample.output_text}}"}]}],
            **extra}


def test_score_model_asks_the_endpoint_and_reads_its_result(upstream):
    endpoint = Endpoint(base_url=upstream.url, api_key="sk-upstream")
    result = run_grader(score_model("judge", sampling_params={"temperature": 0, "max_completions_tokens": 50}),
                        make_sample("Paris"), {"reference": "Paris"}, endpoint=endpoint)
    assert result["reward"] == 0.8 and raised(result) == []
    assert result["metadata"]["sampled_model_name"] == "judge" and result["metadata"]["token_usage"] == 25
    assert result["model_grader_token_usage_per_model"] == {
        "judge": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}}
    sent = upstream.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-upstream"
    assert sent["body"]["temperature"] == 0 and sent["body"]["max_completion_tokens"] == 50
    messages = sent["body"]["messages"]
    assert messages[0]["role"] == "system" and "JSON" in messages[0]["content"]  # the answer format comes first
    assert messages[1] == {"role": "system", "content": "Score the answer against Paris."}
    assert messages[2] == {"role": "user", "content": [{"type": "text", "text": "Answer: Paris"}]}


def test_score_model_clips_to_range_and_reads_bare_numbers(upstream):
    endpoint = Endpoint(base_url=upstream.url)
    assert reward(score_model("generous", range=[0, 5]), "x", {"reference": "y"}, endpoint=endpoint) == 5.0
    assert reward(score_model("bare"), "x", {"reference": "y"}, endpoint=endpoint) == 0.25


@pytest.mark.parametrize("model, flag", [("chatty", "model_grader_parse_error"), ("down", "model_grader_server_error"),
                                         ("refuser", "model_grader_refusal_error")])
def test_score_model_failures_score_zero_with_their_flag(upstream, model, flag):
    result = run_grader(score_model(model), make_sample("x"), {"reference": "y"}, endpoint=Endpoint(base_url=upstream.url))
    assert result["reward"] == 0.0 and raised(result) == [flag]
    if flag == "model_grader_server_error":
        assert "503" in result["metadata"]["errors"]["model_grader_server_error_details"]


def test_an_unreachable_endpoint_is_a_model_grader_server_error():
    closed = FakeChat({})
    closed.close()
    result = run_grader(score_model("judge"), make_sample("x"), {"reference": "y"},
                        endpoint=Endpoint(base_url=closed.url, timeout=5))
    assert result["reward"] == 0.0 and raised(result) == ["model_grader_server_error"]


def label_model(model: str) -> dict:
    return {"type": "label_model", "name": "verdict", "model": model,
            "input": [{"role": "user", "content": "Is '{{sample.output_text}}' right for {{item.question}}?"}],
            "labels": ["correct", "incorrect"], "passing_labels": ["correct"]}


def test_label_model_passes_on_a_passing_label_inside_multi(upstream):
    endpoint = Endpoint(base_url=upstream.url)
    grader = {"type": "multi", "name": "m", "calculate_output": "verdict * judge",
              "graders": {"verdict": label_model("labeller"), "judge": score_model("judge")}}
    result = run_grader(grader, make_sample("Paris"), {"question": "the capital", "reference": "Paris"}, endpoint=endpoint)
    assert result["reward"] == 0.8 and result["sub_rewards"] == {"verdict": 1.0, "judge": 0.8}
    assert result["model_grader_token_usage_per_model"]["labeller"]["total_tokens"] == 25
    assert result["metadata"]["token_usage"] == 50
    assert "correct, incorrect" in upstream.requests[0]["body"]["messages"][0]["content"]
    grader["graders"]["verdict"] = label_model("wrong-label")
    result = run_grader(grader, make_sample("Paris"), {"question": "q", "reference": "Paris"}, endpoint=endpoint)
    assert result["reward"] == 0.0 and raised(result) == ["model_grader_parse_error"]
