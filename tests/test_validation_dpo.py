"""Preference-file validation (method "dpo"): every rule names its line, the right error code and
param; good files, the bundled example data included, pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openft.validation import validate_training_file
from tests.helpers import assert_fails_at_line_3

EXAMPLES = Path(__file__).resolve().parents[1] / "openft" / "examples"

SYSTEM = {"role": "system", "content": "You are the support bot of Acme Rocket Co."}
USER = {"role": "user", "content": "How long is the warranty?"}
GOOD_REPLY = {"role": "assistant", "content": "Two years, or one trip around the Moon."}
BAD_REPLY = {"role": "assistant", "content": "There is no warranty."}
CALL = {"id": "call_1", "type": "function", "function": {"name": "track", "arguments": '{"order": 7}'}}
TOOL = {"type": "function", "function": {"name": "track", "parameters": {"type": "object"}}}


def pair(messages=None, preferred=None, non_preferred=None, **input_keys) -> dict:
    return {
        "input": {"messages": [SYSTEM, USER] if messages is None else messages, **input_keys},
        "preferred_output": [GOOD_REPLY] if preferred is None else preferred,
        "non_preferred_output": [BAD_REPLY] if non_preferred is None else non_preferred,
    }


GOOD = pair()


def without(key: str) -> dict:
    return {k: v for k, v in GOOD.items() if k != key}


def jsonl(*rows) -> bytes:
    return b"".join((row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows)


def validate(data: bytes, param: str = "training_file", min_examples: int = 1, method: str = "dpo"):
    return validate_training_file(data, param=param, min_examples=min_examples, method=method)


# (rule, bad row placed on line 3 after two good rows, words the message must contain)
PREFERENCE_RULES = [
    ("json", b'{"input": {', "is not valid JSON"),
    ("json_object", [GOOD], "must be a JSON object, got a list"),
    ("not_the_chat_format", {"messages": [USER, GOOD_REPLY]},
     "uses the chat format ('messages'), but method 'dpo' needs the preference format ('input', "
     "'preferred_output', 'non_preferred_output')"),
    ("not_the_legacy_format", {"prompt": "2+2=", "completion": " 4"},
     "uses the legacy format ('prompt'/'completion'), but method 'dpo' needs the preference format"),
    ("top_level_keys", {**GOOD, "metadata": {}},
     "has unknown key 'metadata' (expected input, preferred_output, non_preferred_output)"),
    ("needs_input", without("input"), "has no 'input'; the preference format needs 'input', 'preferred_output'"),
    ("needs_preferred_output", without("preferred_output"), "has no 'preferred_output'"),
    ("needs_non_preferred_output", without("non_preferred_output"), "has no 'non_preferred_output'"),
    ("input_is_object", {**GOOD, "input": [SYSTEM, USER]}, "'input' must be an object holding 'messages', got a list"),
    ("input_keys", pair(temperature=0.2),
     "'input' has unknown key 'temperature' (expected messages, tools, parallel_tool_calls)"),
    ("input_needs_messages", {**GOOD, "input": {}}, "'input.messages' must be a non-empty list, got null"),
    ("input_messages_non_empty", pair(messages=[]), "'input.messages' must be a non-empty list, got an empty list"),
    ("input_messages_is_list", pair(messages="hi"), "'input.messages' must be a non-empty list, got a string"),
    ("input_message_is_object", pair(messages=["hi"]), "input message 1 must be a JSON object, got a string"),
    ("input_message_known_role", pair(messages=[{"role": "robot", "content": "Beep."}]),
     "input message 1 has unknown role 'robot' (expected one of system, developer, user, assistant, tool"),
    ("input_message_keys", pair(messages=[{**USER, "tool_call_id": "x"}]),
     "input message 1 (user) has unknown key 'tool_call_id' (expected role, content, name)"),
    ("input_message_content", pair(messages=[SYSTEM, {"role": "user", "content": ""}]),
     "input message 2 (user) has empty content"),
    ("input_images_not_supported",
     pair(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]),
     "input message 1 (user) content part 1 is an image; images are not supported"),
    ("input_tool_message_needs_tool_call_id",
     pair(messages=[USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "in orbit"}]),
     "input message 3 (tool) has no 'tool_call_id'"),
    ("input_no_weight", pair(messages=[USER, {**GOOD_REPLY, "weight": 1}, USER]),
     "input message 2 (assistant) has 'weight', which the preference format does not use"),
    ("input_parallel_tool_calls_boolean", pair(parallel_tool_calls="yes"),
     "'input.parallel_tool_calls' must be true or false, got a string"),
    ("input_tools_is_list", pair(tools=TOOL), "'input.tools' must be a list of 0 to 128 definitions, got an object"),
    ("input_tools_function_name", pair(tools=[{"type": "function", "function": {}}]),
     "input.tools[1].function needs a non-empty string 'name'"),
    ("preferred_output_is_list", pair(preferred=GOOD_REPLY),
     "'preferred_output' must be a list holding exactly one assistant message, got an object"),
    ("preferred_output_not_empty", pair(preferred=[]),
     "'preferred_output' must be a list holding exactly one assistant message, got an empty list"),
    ("preferred_output_exactly_one", pair(preferred=[GOOD_REPLY, GOOD_REPLY]),
     "'preferred_output' must be a list holding exactly one assistant message, got a list of 2 messages"),
    ("non_preferred_output_exactly_one", pair(non_preferred=[BAD_REPLY, BAD_REPLY]),
     "'non_preferred_output' must be a list holding exactly one assistant message, got a list of 2 messages"),
    ("output_message_is_object", pair(preferred=["Two years."]),
     "preferred_output message must be a JSON object, got a string"),
    ("output_is_assistant", pair(non_preferred=[USER]),
     "non_preferred_output message has role 'user'; it must be an assistant message"),
    ("output_content_or_tool_calls", pair(preferred=[{"role": "assistant"}]),
     "preferred_output message (assistant) has no content; content may be missing only with tool_calls"),
    ("output_content_non_empty", pair(non_preferred=[{"role": "assistant", "content": ""}]),
     "non_preferred_output message (assistant) has empty content"),
    ("output_known_keys", pair(preferred=[{**GOOD_REPLY, "tool_call_id": "x"}]),
     "preferred_output message (assistant) has unknown key 'tool_call_id'"),
    ("output_no_weight", pair(preferred=[{**GOOD_REPLY, "weight": 1}]),
     "preferred_output message (assistant) has 'weight', which the preference format does not use"),
    ("output_tool_call_shape", pair(preferred=[{"role": "assistant", "tool_calls": [{**CALL, "id": ""}]}]),
     "preferred_output message (assistant) tool_calls[1] needs a non-empty string 'id'"),
    ("output_images_not_supported", pair(preferred=[{"role": "assistant", "content": [{"type": "image_url"}]}]),
     "preferred_output message (assistant) content part 1 is an image; images are not supported"),
]


@pytest.mark.parametrize("param", ["training_file", "validation_file"])
@pytest.mark.parametrize(("rule", "bad", "words"), PREFERENCE_RULES, ids=[r[0] for r in PREFERENCE_RULES])
def test_a_preference_file_breaking_a_rule_fails_naming_the_line_and_rule(param, rule, bad, words):
    report = validate(jsonl(GOOD, GOOD, bad, bad), param=param, min_examples=10)
    assert_fails_at_line_3(report, param, rule, words)
    assert report.n_examples == 2 and report.format == "preference"


def test_a_preference_file_with_tools_multi_turn_context_and_a_preferred_tool_call_passes():
    rows = [
        GOOD,
        pair(messages=[{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]}, USER,
                       GOOD_REPLY, {**USER, "name": "ann"}]),
        pair(messages=[{"role": "user", "content": "Where is my rocket?"}], tools=[TOOL], parallel_tool_calls=False,
             preferred=[{"role": "assistant", "content": None, "tool_calls": [CALL]}],
             non_preferred=[{"role": "assistant", "content": [{"type": "text", "text": "Somewhere."}]}]),
        pair(messages=[USER, {"role": "assistant", "tool_calls": [CALL]},
                       {"role": "tool", "tool_call_id": "call_1", "content": "in orbit"}], tools=[]),
        # An SDK model_dump() writes null for unset fields: they count as absent.
        pair(preferred=[{**GOOD_REPLY, "refusal": None, "tool_calls": None, "weight": None}]),
    ]
    report = validate(jsonl(*rows))
    assert (report.n_examples, report.format, report.error) == (5, "preference", None)


def test_too_few_preference_examples_fail_with_invalid_n_examples():
    report = validate(jsonl(GOOD, GOOD, GOOD), min_examples=10)
    assert report.error == {"code": "invalid_n_examples", "param": "training_file",
                            "message": "Training file has 3 example(s), but must have at least 10 examples"}


def test_a_preference_validation_file_needs_one_example_but_no_minimum():
    assert validate(jsonl(GOOD), param="validation_file", min_examples=10).error is None
    error = validate(b"\n", param="validation_file", min_examples=10).error
    assert error == {"code": "invalid_validation_file", "param": "validation_file",
                     "message": "Validation file has no examples"}


def test_preference_rows_in_a_supervised_file_are_named_as_such():
    report = validate(jsonl(GOOD), method="supervised")
    assert report.error["code"] == "invalid_training_file"
    assert report.error["message"] == (
        "Line 1: uses the preference format ('input', 'preferred_output', 'non_preferred_output'), which is for "
        "method 'dpo'; supervised fine-tuning needs 'messages' (chat format) or 'prompt' and 'completion' "
        "(legacy format)")


def test_the_method_defaults_to_supervised_and_an_unknown_method_is_a_programming_error():
    chat = {"messages": [USER, GOOD_REPLY]}
    assert validate_training_file(jsonl(chat), param="training_file", min_examples=1).error is None
    with pytest.raises(ValueError, match="no validation rules for method 'distillation'"):
        validate(jsonl(GOOD), method="distillation")


@pytest.mark.parametrize(("name", "param", "n"), [("preference.jsonl", "training_file", 40),
                                                  ("preference_validation.jsonl", "validation_file", 10)])
def test_the_bundled_preference_files_pass(name, param, n):
    report = validate((EXAMPLES / name).read_bytes(), param=param, min_examples=10)
    assert (report.n_examples, report.format, report.error) == (n, "preference", None)


def test_the_bundled_preference_pairs_are_held_out_and_really_differ():
    def rows(name):
        return [json.loads(line) for line in (EXAMPLES / name).read_text().splitlines()]

    def prompts(name):
        return {r["input"]["messages"][-1]["content"] for r in rows(name)}

    assert not prompts("preference.jsonl") & prompts("preference_validation.jsonl")
    for name in ("preference.jsonl", "preference_validation.jsonl"):
        assert all(r["preferred_output"] != r["non_preferred_output"] for r in rows(name))
