"""Reinforcement-file validation (method "reinforcement"): every rule names its line, the right error
code and param; good files, the bundled example data included, pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openft.validation import validate_training_file
from tests.helpers import assert_fails_at_line_3

EXAMPLES = Path(__file__).resolve().parents[1] / "openft" / "examples"

DEVELOPER = {"role": "developer", "content": "Answer with the city only."}
USER = {"role": "user", "content": "What is the capital of France?"}
REPLY = {"role": "assistant", "content": "Paris."}
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"country": "FR"}'}}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def row(messages=None, **keys) -> dict:
    return {"messages": [DEVELOPER, USER] if messages is None else messages, "answer": "Paris", **keys}


GOOD = row()


def jsonl(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def validate(data: bytes, param: str = "training_file", min_examples: int = 1):
    return validate_training_file(data, param=param, min_examples=min_examples, method="reinforcement")


# (rule, bad row placed on line 3 after two good rows, words the message must contain)
REINFORCEMENT_RULES = [
    ("json", b'{"messages": [', "is not valid JSON"),
    ("json_object", [GOOD], "must be a JSON object, got a list"),
    ("needs_messages", {"answer": "Paris"},
     "has no 'messages'; the reinforcement format needs 'messages' (the prompt, ending with a user or developer "
     "message) and takes any other key for the grader as {{item.<key>}}"),
    ("not_the_preference_format", {"input": {"messages": [USER]}, "preferred_output": [REPLY],
                                   "non_preferred_output": [REPLY]},
     "uses the preference format ('input', 'preferred_output', 'non_preferred_output'), but method "
     "'reinforcement' needs 'messages'"),
    ("not_the_legacy_format", {"prompt": "Capital of France?", "completion": " Paris"},
     "uses the legacy format ('prompt'/'completion'), but method 'reinforcement' needs 'messages'"),
    ("messages_is_list", row(messages="What is the capital of France?"),
     "'messages' must be a non-empty list, got a string"),
    ("messages_non_empty", row(messages=[]), "'messages' must be a non-empty list, got an empty list"),
    ("message_is_object", row(messages=["hi"]), "message 1 must be a JSON object, got a string"),
    ("message_known_role", row(messages=[{"role": "robot", "content": "Beep."}, USER]),
     "message 1 has unknown role 'robot'"),
    ("no_function_role", row(messages=[USER, {"role": "function", "name": "lookup", "content": "FR"}, USER]),
     "message 2 has role 'function', which the reinforcement format does not take (expected one of system, "
     "developer, user, assistant, tool)"),
    ("message_keys", row(messages=[{**USER, "tool_call_id": "x"}]),
     "message 1 (user) has unknown key 'tool_call_id' (expected role, content, name)"),
    ("message_content", row(messages=[DEVELOPER, {"role": "user", "content": ""}]),
     "message 2 (user) has empty content"),
    ("images_not_supported",
     row(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]),
     "message 1 (user) content part 1 is an image; images are not supported"),
    ("tool_message_needs_tool_call_id",
     row(messages=[USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "FR"}, USER]),
     "message 3 (tool) has no 'tool_call_id'"),
    ("assistant_tool_call_shape", row(messages=[USER, {"role": "assistant", "tool_calls": [{**CALL, "id": ""}]}]),
     "message 2 (assistant) tool_calls[1] needs a non-empty string 'id'"),
    ("no_weight", row(messages=[USER, {**REPLY, "weight": 1}, USER]),
     "message 2 (assistant) has 'weight', which the reinforcement format does not use"),
    ("ends_with_user_or_developer", row(messages=[DEVELOPER, USER, REPLY]),
     "ends with a message of role 'assistant'; in the reinforcement format the last message must be a user or "
     "developer message"),
    ("does_not_end_with_a_tool_result",
     row(messages=[USER, {"role": "assistant", "tool_calls": [CALL]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "FR"}]),
     "ends with a message of role 'tool'; in the reinforcement format the last message must be a user or developer "
     "message"),
    ("tools_is_list", row(tools=TOOL), "'tools' must be a list of 0 to 128 definitions, got an object"),
    ("tools_function_name", row(tools=[{"type": "function", "function": {}}]),
     "tools[1].function needs a non-empty string 'name'"),
]


@pytest.mark.parametrize("param", ["training_file", "validation_file"])
@pytest.mark.parametrize(("rule", "bad", "words"), REINFORCEMENT_RULES, ids=[r[0] for r in REINFORCEMENT_RULES])
def test_a_reinforcement_file_breaking_a_rule_fails_naming_the_line_and_rule(param, rule, bad, words):
    report = validate(jsonl(GOOD, GOOD, bad, bad), param=param, min_examples=10)
    assert_fails_at_line_3(report, param, rule, words)
    assert report.n_examples == 2 and report.format == "reinforcement"


def test_a_reinforcement_file_with_tools_context_system_turns_and_free_grader_keys_passes():
    rows = [
        GOOD,
        {"messages": [USER]},  # no grader keys at all: a python grader may need none
        row(messages=[{"role": "system", "content": "Be brief."}, USER]),
        row(messages=[{"role": "developer", "content": [{"type": "text", "text": "Think, then answer."}]}]),
        row(messages=[USER, {"role": "assistant", "tool_calls": [CALL]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "FR"}, {**USER, "name": "ann"}],
            tools=[TOOL], parallel_tool_calls=False),
        row(tools=[], reference={"city": "Paris", "aliases": ["Lutetia"]}, score=3, tags=None),
        # An SDK model_dump() writes null for unset fields: they count as absent.
        row(messages=[{**DEVELOPER, "name": None}, USER]),
    ]
    report = validate(jsonl(*rows))
    assert (report.n_examples, report.format, report.error) == (7, "reinforcement", None)


def test_too_few_reinforcement_examples_fail_with_invalid_n_examples():
    report = validate(jsonl(GOOD, GOOD, GOOD), min_examples=10)
    assert report.error == {"code": "invalid_n_examples", "param": "training_file",
                            "message": "Training file has 3 example(s), but must have at least 10 examples"}


def test_a_reinforcement_validation_file_needs_one_example_but_no_minimum():
    assert validate(jsonl(GOOD), param="validation_file", min_examples=10).error is None
    report = validate(b"\n", param="validation_file", min_examples=10)
    assert report.format == "reinforcement"
    assert report.error == {"code": "invalid_validation_file", "param": "validation_file",
                            "message": "Validation file has no examples"}


@pytest.mark.parametrize(("name", "param", "n"), [("rft.jsonl", "training_file", 40),
                                                  ("rft_validation.jsonl", "validation_file", 12)])
def test_the_bundled_reinforcement_files_pass(name, param, n):
    report = validate((EXAMPLES / name).read_bytes(), param=param, min_examples=10)
    assert (report.n_examples, report.format, report.error) == (n, "reinforcement", None)


def test_the_bundled_reinforcement_prompts_are_held_out_and_carry_the_answer_the_example_grader_reads():
    def rows(name):
        return [json.loads(line) for line in (EXAMPLES / name).read_text().splitlines()]

    def prompts(name):
        return {r["messages"][-1]["content"] for r in rows(name)}

    assert not prompts("rft.jsonl") & prompts("rft_validation.jsonl")
    for name in ("rft.jsonl", "rft_validation.jsonl"):
        assert all(isinstance(r["answer"], str) and r["answer"] for r in rows(name))
