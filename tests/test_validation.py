"""Training-file validation: every rule names its line, the right error code and param; good files pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from openft.validation import MAX_JSONL_LINE_BYTES, validate_training_file
from tests.helpers import assert_fails_at_line_3

EXAMPLES = Path(__file__).resolve().parents[1] / "openft" / "examples"

SYSTEM = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "Weather in Paris?"}
ASSISTANT = {"role": "assistant", "content": "Sunny."}
GOOD = {"messages": [SYSTEM, USER, ASSISTANT]}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
LEGACY = {"prompt": "2+2=", "completion": " 4"}


def jsonl(*rows) -> bytes:
    return b"".join((row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows)


def chat(*messages, **top) -> dict:
    return {"messages": list(messages), **top}


def with_assistant(message: dict) -> dict:
    return chat(USER, message)


def validate(data: bytes, param: str = "training_file", min_examples: int = 1):
    return validate_training_file(data, param=param, min_examples=min_examples)


# (rule, bad row placed on line 3 after two good rows of the same format, words the message must contain)
CHAT_RULES = [
    ("utf8", b'{"messages": "caf\xe9"}', "is not valid UTF-8"),
    ("json", b'{"messages": [', "is not valid JSON"),
    ("json_object", [GOOD], "must be a JSON object, got a list"),
    ("json_not_too_deep", b"[" * 100_000 + b"]" * 100_000, "is nested too deeply"),
    ("known_format", {"text": "hi"}, "has neither 'messages' (chat format) nor 'prompt' and 'completion'"),
    ("one_format_per_file", LEGACY, "the whole file must use one format"),
    ("top_level_keys", {**GOOD, "metadata": {}}, "has unknown key 'metadata' (expected messages, tools,"),
    ("messages_non_empty", chat(), "'messages' must be a non-empty list, got an empty list"),
    ("messages_is_list", {"messages": "hi"}, "'messages' must be a non-empty list, got a string"),
    ("message_is_object", chat(USER, "Sunny."), "message 2 must be a JSON object, got a string"),
    ("message_has_role", chat(USER, {"content": "Sunny."}), "message 2 has no 'role'"),
    ("known_role", chat(USER, {"role": "robot", "content": "Beep."}),
     "message 2 has unknown role 'robot' (expected one of system, developer, user, assistant, tool, function)"),
    ("known_message_keys", chat({**USER, "tool_call_id": "x"}, ASSISTANT),
     "message 1 (user) has unknown key 'tool_call_id' (expected role, content, name)"),
    ("weight_only_on_assistant", chat({**USER, "weight": 1}, ASSISTANT),
     "message 1 (user) has 'weight', which is only allowed on assistant messages"),
    ("weight_zero_or_one", with_assistant({**ASSISTANT, "weight": 0.5}),
     "message 2 (assistant) has weight 0.5; weight must be 0 or 1"),
    ("weight_not_boolean", with_assistant({**ASSISTANT, "weight": True}), "has weight true; weight must be 0 or 1"),
    ("content_present", chat({"role": "user"}, ASSISTANT),
     "message 1 (user) content must be a non-empty string or a list of text parts, got null"),
    ("content_non_empty", chat({"role": "user", "content": ""}, ASSISTANT), "message 1 (user) has empty content"),
    ("content_parts_non_empty", chat({"role": "user", "content": []}, ASSISTANT), "got an empty list"),
    ("content_part_is_object", chat({"role": "user", "content": ["hi"]}, ASSISTANT),
     "message 1 (user) content part 1 must be an object with type 'text', got a string"),
    ("content_part_types", chat({"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}, ASSISTANT),
     "message 1 (user) content part 1 has type 'refusal'; user content parts must have type 'text'"),
    ("images_not_supported",
     chat({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}, ASSISTANT),
     "message 1 (user) content part 1 is an image; images are not supported"),
    ("text_part_has_text", chat({"role": "user", "content": [{"type": "text", "text": ""}]}, ASSISTANT),
     "content part 1 needs a non-empty string 'text'"),
    ("assistant_content_or_tool_calls", with_assistant({"role": "assistant", "content": None}),
     "message 2 (assistant) has no content; content may be missing only with tool_calls or function_call"),
    ("assistant_content_parts", with_assistant({"role": "assistant", "content": [{"type": "image_url"}]}),
     "message 2 (assistant) content part 1 is an image; images are not supported"),
    ("name_is_string", chat({**USER, "name": 7}, ASSISTANT), "message 1 (user) 'name' must be a non-empty string"),
    ("refusal_is_string", with_assistant({**ASSISTANT, "refusal": ["no"]}), "'refusal' must be a non-empty string"),
    ("tool_calls_non_empty", with_assistant({"role": "assistant", "tool_calls": []}),
     "message 2 (assistant) 'tool_calls' must be a non-empty list"),
    ("tool_call_id", with_assistant({"role": "assistant", "tool_calls": [{**CALL, "id": ""}]}),
     "message 2 (assistant) tool_calls[1] needs a non-empty string 'id'"),
    ("tool_call_type", with_assistant({"role": "assistant", "tool_calls": [{**CALL, "type": "code"}]}),
     "tool_calls[1] must have type 'function', got 'code'"),
    ("tool_call_function_name", with_assistant({"role": "assistant", "tool_calls": [{**CALL, "function": {}}]}),
     "tool_calls[1].function needs a non-empty string 'name'"),
    ("tool_call_arguments_string",
     with_assistant({"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {}}}]}),
     "tool_calls[1].function.arguments must be a string holding JSON"),
    ("function_call_shape", with_assistant({"role": "assistant", "function_call": {"name": "f"}}),
     "message 2 (assistant) function_call.arguments must be a string"),
    ("tool_message_needs_tool_call_id",
     chat(USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "21"}, ASSISTANT),
     "message 3 (tool) has no 'tool_call_id'"),
    ("function_message_needs_name",
     chat(USER, {"role": "assistant", "function_call": CALL["function"]}, {"role": "function", "content": "21"}),
     "message 3 (function) has no 'name'"),
    ("needs_assistant_message", chat(SYSTEM, USER), "has no assistant message"),
    ("needs_a_trained_turn", with_assistant({**ASSISTANT, "weight": 0}),
     "every assistant message has weight 0, so there is nothing to train on"),
    ("parallel_tool_calls_boolean", {**GOOD, "parallel_tool_calls": "no"},
     "'parallel_tool_calls' must be true or false"),
    ("tools_is_list", {**GOOD, "tools": TOOL}, "'tools' must be a list of 0 to 128 definitions, got an object"),
    ("tools_type_function", {**GOOD, "tools": [{**TOOL, "type": "retrieval"}]},
     "tools[1] must be an object with type 'function'"),
    ("tools_function_name", {**GOOD, "tools": [{"type": "function", "function": {"description": "d"}}]},
     "tools[1].function needs a non-empty string 'name'"),
    ("tools_parameters_object", {**GOOD, "tools": [{"type": "function", "function": {"name": "f", "parameters": 1}}]},
     "tools[1].function.parameters must be a JSON Schema object"),
    ("functions_count", {**GOOD, "functions": [{"name": f"f{i}"} for i in range(129)]},
     "'functions' must be a list of 1 to 128 definitions"),
]

LEGACY_RULES = [
    ("legacy_needs_completion", {"prompt": "2+2="}, "has no 'completion'; the legacy format needs both"),
    ("legacy_strings", {"prompt": 2, "completion": " 4"}, "'prompt' must be a string, got a number"),
    ("legacy_completion_non_empty", {"prompt": "2+2=", "completion": ""}, "'completion' is empty"),
    ("legacy_known_keys", {**LEGACY, "weight": 1}, "has unknown key 'weight' (expected prompt, completion)"),
    ("legacy_one_format_per_file", GOOD, "uses the chat format ('messages'), but the lines before it use the legacy"),
]


@pytest.mark.parametrize("param", ["training_file", "validation_file"])
@pytest.mark.parametrize(("rule", "bad", "words"), CHAT_RULES, ids=[r[0] for r in CHAT_RULES])
def test_a_chat_file_breaking_a_rule_fails_naming_the_line_and_rule(param, rule, bad, words):
    report = validate(jsonl(GOOD, GOOD, bad, bad), param=param, min_examples=10)
    assert_fails_at_line_3(report, param, rule, words)


@pytest.mark.parametrize(("rule", "bad", "words"), LEGACY_RULES, ids=[r[0] for r in LEGACY_RULES])
def test_a_legacy_file_breaking_a_rule_fails_naming_the_line_and_rule(rule, bad, words):
    report = validate(jsonl(LEGACY, LEGACY, bad))
    assert report.error["code"] == "invalid_training_file" and report.error["param"] == "training_file"
    assert report.error["message"].startswith("Line 3: ") and words in report.error["message"], report.error


def test_too_few_training_examples_fail_with_openais_invalid_n_examples_message():
    report = validate(jsonl(GOOD, GOOD, GOOD), min_examples=10)
    assert report.n_examples == 3
    assert report.error == {"code": "invalid_n_examples", "param": "training_file",
                            "message": "Training file has 3 example(s), but must have at least 10 examples"}


def test_an_empty_training_file_is_a_count_error():
    assert validate(b"", min_examples=10).error["code"] == "invalid_n_examples"


def test_a_validation_file_needs_one_example_but_no_minimum():
    assert validate(jsonl(GOOD), param="validation_file", min_examples=10).error is None
    error = validate(b"\n\n", param="validation_file", min_examples=10).error
    assert error == {"code": "invalid_validation_file", "param": "validation_file",
                     "message": "Validation file has no examples"}


def test_the_first_error_wins():
    bad_role, no_assistant = chat({"role": "robot", "content": "x"}), chat(USER)
    message = validate(jsonl(GOOD, no_assistant, bad_role)).error["message"]
    assert message.startswith("Line 2: has no assistant message")


def test_line_numbers_count_skipped_blank_lines():
    report = validate(jsonl(GOOD) + b"\n   \n" + jsonl(chat(USER)))
    assert report.error["message"].startswith("Line 4: ")


def test_blank_lines_crlf_a_bom_and_a_trailing_newline_are_accepted():
    data = b"\xef\xbb\xbf" + jsonl(GOOD).replace(b"\n", b"\r\n") + b"\n\r\n" + jsonl(GOOD).rstrip(b"\n")
    report = validate(data, min_examples=2)
    assert (report.n_examples, report.error) == (2, None)


@pytest.mark.parametrize("chunk", [1, 2, 5, 1 << 20])
def test_a_file_read_in_chunks_gets_the_same_report_as_whole(chunk):
    """A stored file is validated a chunk at a time: lines, the BOM and an over-long line's length come out the
    same wherever the chunks split."""
    over = b'{"messages": "' + b"x" * MAX_JSONL_LINE_BYTES + b'"}'
    files = [b"\xef\xbb\xbf" + jsonl(GOOD, GOOD).replace(b"\n", b"\r\n") + b"\n" + jsonl(GOOD).rstrip(b"\n"),
             jsonl(GOOD, b"", GOOD, b'{"messages": ['), b"\xef\xbb", jsonl(GOOD, over, GOOD), jsonl(GOOD) + over]
    for data in files:
        size = chunk if len(data) < 1000 else max(chunk, 1 << 16)
        chunks = (data[i:i + size] for i in range(0, len(data), size))
        whole = validate(data)
        assert validate_training_file(chunks, param="training_file", min_examples=1) == whole
    assert f"Line 2: is {len(over) + 1} bytes long" in validate(files[3]).error["message"]
    assert f"Line 2: is {len(over)} bytes long" in validate(files[4]).error["message"]


def test_a_line_separator_inside_a_string_does_not_split_the_line():
    row = chat(USER, {"role": "assistant", "content": "one\u2028two\u0085three"})
    assert validate(json.dumps(row, ensure_ascii=False).encode()).error is None


def test_a_chat_example_with_tools_and_tool_calls_passes():
    row = chat(
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]}, USER,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21.0"},
        {"role": "assistant", "content": [{"type": "text", "text": "21 C."}, {"type": "refusal", "refusal": "No."}]},
        tools=[TOOL], parallel_tool_calls=False,
    )
    report = validate(jsonl(row))
    assert (report.n_examples, report.format, report.error) == (1, "chat", None)


def test_empty_content_beside_a_tool_call_and_an_empty_tools_list_pass():
    row = chat(USER, {"role": "assistant", "content": "", "tool_calls": [CALL]},
               {"role": "tool", "tool_call_id": "call_1", "content": "21.0"}, ASSISTANT, tools=[])
    assert validate(jsonl(row)).error is None


def test_null_valued_message_keys_count_as_absent_as_in_sdk_dumps():
    dumped = {"role": "assistant", "content": "Sunny.", "refusal": None, "tool_calls": None, "function_call": None}
    assert validate(jsonl(chat(USER, dumped))).error is None


def test_a_multi_turn_example_with_weights_passes():
    row = chat(SYSTEM, USER, {**ASSISTANT, "weight": 0}, {**USER, "name": "ann"}, {**ASSISTANT, "weight": 1}, ASSISTANT)
    assert validate(jsonl(row)).error is None


def test_a_deprecated_function_calling_example_passes():
    row = chat(USER, {"role": "assistant", "function_call": CALL["function"]},
               {"role": "function", "name": "get_weather", "content": "21"}, ASSISTANT,
               functions=[{"name": "get_weather", "parameters": {"type": "object"}}])
    assert validate(jsonl(row)).error is None


def test_a_legacy_prompt_completion_file_passes_and_reports_its_format():
    report = validate(jsonl(*[LEGACY] * 10), min_examples=10)
    assert (report.n_examples, report.format, report.error) == (10, "prompt_completion", None)


@pytest.mark.parametrize(("name", "param", "n"), [("quickstart.jsonl", "training_file", 30),
                                                  ("quickstart_validation.jsonl", "validation_file", 8)])
def test_the_bundled_quickstart_files_pass(name, param, n):
    report = validate((EXAMPLES / name).read_bytes(), param=param, min_examples=10)
    assert (report.n_examples, report.error) == (n, None)


def test_the_quickstart_validation_prompts_are_held_out():
    def prompts(name):
        return {json.loads(line)["messages"][1]["content"] for line in (EXAMPLES / name).read_text().splitlines()}
    assert not prompts("quickstart.jsonl") & prompts("quickstart_validation.jsonl")


def test_validation_imports_nothing_outside_the_standard_library():
    code = ("import sys; before = set(sys.modules); import openft.validation; "
            "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] not in sys.stdlib_module_names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert set(eval(out)) <= {"openft", "openft.validation"}, out
