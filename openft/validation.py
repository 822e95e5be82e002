"""Validation of fine-tuning files: the rules and their error messages.

``validate_training_file`` checks a JSONL file and either counts its examples or names the first problem with its
1-based line number and the rule broken, as the ``error`` object of a failed job (``code``, ``param``, ``message``).
Standard library only: it runs in the API process, which never imports torch.

The job's ``method`` decides the format: "supervised" takes the chat format or the legacy prompt/completion
format (one per file); "dpo" takes the preference format ``{"input": {"messages", "tools"?,
"parallel_tool_calls"?}, "preferred_output": [one assistant message], "non_preferred_output": [one assistant
message]}``, whose messages follow the chat format's rules (roles, keys, content, tool calls, tool definitions);
"reinforcement" takes the reinforcement format ``{"messages": [...], "tools"?: [...], <any other key>}`` (contract
§4.4): the prompt the model answers, whose messages follow the chat format's rules and whose last message is a user
or developer message; every other key is the grader's ``{{item.<key>}}`` and is not checked.

Decisions where OpenAI documents nothing:

* Blank (whitespace-only) lines are skipped, not rejected; line numbers still count them, so they match an editor.
  A trailing newline, Windows line endings and a UTF-8 byte-order mark at the start are fine.
* Lines are split on ``\\n`` only, so U+2028 and friends inside JSON strings do not split a line.
* Images are rejected: the models served are text-only.
* An example whose assistant messages all have weight 0 is rejected: there is nothing in it to train on.
* A message key set to null counts as absent (``model_dump()`` of an SDK message writes null for unset fields),
  except ``content``, whose null is meaningful beside tool calls. Trainers must read messages the same way.
* An empty ``tools`` list is accepted, and so is an empty assistant ``content`` beside a tool or function call.
* Preference format: ``weight`` is rejected on every message (the spec's preference messages have none, and a DPO
  pair has no turns to leave out); ``input.messages`` may hold earlier assistant turns (multi-turn context).
* Reinforcement format: ``system`` messages are accepted beside ``developer`` ones (OpenAI's RFT examples use
  developer and Azure's guide says no system, but ported chat data has system turns, and the models served render
  both the same way); the deprecated ``function`` role is not (the spec lists developer, user, assistant and tool);
  ``weight`` is rejected (no turn of a prompt is trained); earlier assistant and tool turns are context.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

MAX_JSONL_LINE_BYTES = 4 << 20  # one example (OpenAI's largest contexts are far below this); longer is refused
BOM = b"\xef\xbb\xbf"

ROLE_KEYS = {
    "system": ("role", "content", "name"),
    "developer": ("role", "content", "name"),
    "user": ("role", "content", "name"),
    "assistant": ("role", "content", "name", "weight", "tool_calls", "function_call", "refusal"),
    "tool": ("role", "content", "tool_call_id"),
    "function": ("role", "content", "name"),
}
PART_TYPES = {role: ("text",) for role in ROLE_KEYS} | {"assistant": ("text", "refusal")}
PART_TEXT_KEY = {"text": "text", "refusal": "refusal"}
IMAGE_PARTS = {"image_url", "input_image", "image"}
CHAT_KEYS = ("messages", "tools", "parallel_tool_calls", "functions")
LEGACY_KEYS = ("prompt", "completion")
PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
PREFERENCE_INPUT_KEYS = ("messages", "tools", "parallel_tool_calls")
FORMAT_NAMES = {
    "chat": "the chat format ('messages')",
    "prompt_completion": "the legacy format ('prompt'/'completion')",
    "preference": "the preference format ('input', 'preferred_output', 'non_preferred_output')",
}
REINFORCEMENT_LAST_ROLES = ("user", "developer")


@dataclass
class ValidationReport:
    """``n_examples`` counts the examples read (all of them when ``error`` is None)."""

    n_examples: int
    format: Literal["chat", "prompt_completion", "preference", "reinforcement"]
    error: dict | None = None


class _Invalid(Exception):
    """One broken rule; the message is completed with the line number by the caller."""


def validate_training_file(
    data: bytes | Iterable[bytes], *, param: str, min_examples: int, method: str = "supervised"
) -> ValidationReport:
    """Validate a training (``param="training_file"``) or validation (``"validation_file"``) file for a job of
    ``method`` ("supervised", "dpo" or "reinforcement"), given whole or as byte chunks of any size (a stored file
    is read a chunk at a time, so memory does not grow with the file).

    ``min_examples`` applies to the training file only; a validation file needs at least one example.
    """
    if method not in CHECKS:
        raise ValueError(f"no validation rules for method {method!r}")
    check_example, default_format = CHECKS[method], DEFAULT_FORMATS[method]
    code = "invalid_training_file" if param == "training_file" else "invalid_validation_file"
    n, file_format = 0, None
    chunks = (data,) if isinstance(data, bytes) else data
    for number, (raw, length) in enumerate(_lines(chunks), start=1):  # files reach 512 MB
        try:
            example = _parse_line(raw, length)
            if example is None:
                continue
            line_format = check_example(example)
            if file_format and line_format != file_format:
                raise _Invalid(f"uses {FORMAT_NAMES[line_format]}, but the lines before it use "
                               f"{FORMAT_NAMES[file_format]}; the whole file must use one format")
        except _Invalid as e:
            error = {"code": code, "param": param, "message": f"Line {number}: {e}"}
            return ValidationReport(n, file_format or default_format, error)
        file_format, n = line_format, n + 1
    return ValidationReport(n, file_format or default_format, _count_error(n, param, code, min_examples))


def _lines(chunks: Iterable[bytes]) -> Iterator[tuple[bytes | None, int]]:
    """``(line, length)`` for each line of a byte stream (split on ``\\n`` only, each with its newline; a UTF-8
    byte-order mark at the start dropped). A line longer than ``MAX_JSONL_LINE_BYTES`` comes as ``(None, length)``
    and ends the stream: it is measured without being held, and no line after it is read."""
    pending, head, overlong = b"", True, 0
    for chunk in chunks:
        if overlong:
            end = chunk.find(b"\n")
            if end == -1:
                overlong += len(chunk)
                continue
            yield None, overlong + end + 1
            return
        pending += chunk
        if head:
            if len(pending) < len(BOM):
                continue
            pending, head = pending.removeprefix(BOM), False
        start = 0
        while (end := pending.find(b"\n", start)) != -1:
            yield pending[start:end + 1], end + 1 - start
            start = end + 1
        pending = pending[start:]
        if len(pending) > MAX_JSONL_LINE_BYTES:
            pending, overlong = b"", len(pending)
    if overlong:
        yield None, overlong
    elif pending:
        pending = pending.removeprefix(BOM) if head else pending
        yield pending, len(pending)


def _count_error(n: int, param: str, code: str, min_examples: int) -> dict | None:
    """Only the training file has a minimum (OpenAI's wording); a validation file needs one example."""
    if param == "training_file" and n < min_examples:
        message = f"Training file has {n} example(s), but must have at least {min_examples} examples"
        return {"code": "invalid_n_examples", "param": param, "message": message}
    if n == 0:
        return {"code": code, "param": param, "message": "Validation file has no examples"}
    return None


def _parse_line(raw: bytes | None, length: int) -> dict | None:
    if raw is None or length > MAX_JSONL_LINE_BYTES:
        raise _Invalid(f"is {length} bytes long; a line may be at most {MAX_JSONL_LINE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Invalid(f"is not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line)") from None
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise _Invalid(f"is not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object") from None
    except RecursionError:
        raise _Invalid("is nested too deeply to be a training example") from None
    if not isinstance(value, dict):
        raise _Invalid(f"must be a JSON object, got {_kind(value)}")
    return value


def _check_example(example: dict) -> str:
    if "messages" in example:
        _check_chat(example)
        return "chat"
    if "prompt" in example or "completion" in example:
        _check_legacy(example)
        return "prompt_completion"
    if "preferred_output" in example or "non_preferred_output" in example:
        raise _Invalid(f"uses {FORMAT_NAMES['preference']}, which is for method 'dpo'; supervised fine-tuning "
                       "needs 'messages' (chat format) or 'prompt' and 'completion' (legacy format)")
    raise _Invalid("has neither 'messages' (chat format) nor 'prompt' and 'completion' (legacy format)")


def _check_preference(example: dict) -> str:
    for other, keys in (("chat", CHAT_KEYS), ("prompt_completion", LEGACY_KEYS)):
        if keys[0] in example and not any(key in example for key in PREFERENCE_KEYS):
            raise _Invalid(f"uses {FORMAT_NAMES[other]}, but method 'dpo' needs {FORMAT_NAMES['preference']}")
    _check_known_keys(example, PREFERENCE_KEYS, "")
    for key in PREFERENCE_KEYS:
        if key not in example:
            raise _Invalid(f"has no '{key}'; the preference format needs 'input', 'preferred_output' and "
                           "'non_preferred_output'")
    source = example["input"]
    if not isinstance(source, dict):
        raise _Invalid(f"'input' must be an object holding 'messages', got {_kind(source)}")
    _check_known_keys(source, PREFERENCE_INPUT_KEYS, "'input' ")
    messages = source.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Invalid(f"'input.messages' must be a non-empty list, got {_kind(messages)}")
    for index, message in enumerate(messages, start=1):
        _check_preference_message(message, f"input message {index}")
    if "parallel_tool_calls" in source and not isinstance(source["parallel_tool_calls"], bool):
        got = _kind(source["parallel_tool_calls"])
        raise _Invalid(f"'input.parallel_tool_calls' must be true or false, got {got}")
    _check_definitions(source.get("tools"), "input.tools", wrapped=True)
    for key in ("preferred_output", "non_preferred_output"):
        _check_output(example[key], key)
    return "preference"


def _check_output(value: object, key: str) -> None:
    """An output is the assistant's one reply: a list of exactly one assistant message (the spec's maxItems 1)."""
    if not isinstance(value, list) or len(value) != 1:
        got = f"a list of {len(value)} messages" if isinstance(value, list) and value else _kind(value)
        raise _Invalid(f"'{key}' must be a list holding exactly one assistant message, got {got}")
    where = f"{key} message"
    _check_preference_message(value[0], where)
    if value[0]["role"] != "assistant":
        raise _Invalid(f"{where} has role {value[0]['role']!r}; it must be an assistant message (the reply)")


def _check_preference_message(message: object, where: str) -> None:
    _check_message(message, where)
    if message.get("weight") is not None:
        raise _Invalid(f"{where} ({message['role']}) has 'weight', which the preference format does not use")


def _check_reinforcement(example: dict) -> str:
    if "messages" not in example:
        for other, keys in (("preference", PREFERENCE_KEYS), ("prompt_completion", LEGACY_KEYS)):
            if any(key in example for key in keys):
                raise _Invalid(f"uses {FORMAT_NAMES[other]}, but method 'reinforcement' needs 'messages' (the prompt, "
                               "ending with a user or developer message)")
        raise _Invalid("has no 'messages'; the reinforcement format needs 'messages' (the prompt, ending with a user "
                       "or developer message) and takes any other key for the grader as {{item.<key>}}")
    messages = example["messages"]
    if not isinstance(messages, list) or not messages:
        raise _Invalid(f"'messages' must be a non-empty list, got {_kind(messages)}")
    for index, message in enumerate(messages, start=1):
        where = f"message {index}"
        if isinstance(message, dict) and message.get("role") == "function":
            raise _Invalid(f"{where} has role 'function', which the reinforcement format does not take (expected "
                           "one of system, developer, user, assistant, tool)")
        _check_message(message, where)
        if message.get("weight") is not None:
            raise _Invalid(f"{where} ({message['role']}) has 'weight', which the reinforcement format does not use "
                           "(no turn of the prompt is trained)")
    last = messages[-1]["role"]
    if last not in REINFORCEMENT_LAST_ROLES:
        raise _Invalid(f"ends with a message of role {last!r}; in the reinforcement format the last message must be "
                       "a user or developer message (the model's answer to it is what the grader grades)")
    _check_definitions(example.get("tools"), "tools", wrapped=True)
    return "reinforcement"


CHECKS = {"supervised": _check_example, "dpo": _check_preference, "reinforcement": _check_reinforcement}
DEFAULT_FORMATS = {"supervised": "chat", "dpo": "preference", "reinforcement": "reinforcement"}


def _check_legacy(example: dict) -> None:
    _check_known_keys(example, LEGACY_KEYS, "")
    for key in LEGACY_KEYS:
        if key not in example:
            raise _Invalid(f"has no '{key}'; the legacy format needs both 'prompt' and 'completion' strings")
        if not isinstance(example[key], str):
            raise _Invalid(f"'{key}' must be a string, got {_kind(example[key])}")
    if not example["completion"]:
        raise _Invalid("'completion' is empty; there is nothing to train on")


def _check_chat(example: dict) -> None:
    _check_known_keys(example, CHAT_KEYS, "")
    messages = example["messages"]
    if not isinstance(messages, list) or not messages:
        raise _Invalid(f"'messages' must be a non-empty list, got {_kind(messages)}")
    for index, message in enumerate(messages, start=1):
        _check_message(message, f"message {index}")
    assistants = [m for m in messages if m["role"] == "assistant"]
    if not assistants:
        raise _Invalid("has no assistant message; each example needs at least one to train on")
    if all(m.get("weight", 1) == 0 for m in assistants):
        raise _Invalid("every assistant message has weight 0, so there is nothing to train on")
    if "parallel_tool_calls" in example and not isinstance(example["parallel_tool_calls"], bool):
        raise _Invalid(f"'parallel_tool_calls' must be true or false, got {_kind(example['parallel_tool_calls'])}")
    _check_definitions(example.get("tools"), "tools", wrapped=True)
    _check_definitions(example.get("functions"), "functions", wrapped=False)


def _check_message(message: object, where: str) -> None:
    if not isinstance(message, dict):
        raise _Invalid(f"{where} must be a JSON object, got {_kind(message)}")
    message = {key: value for key, value in message.items() if value is not None or key == "content"}
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLE_KEYS:
        expected = ", ".join(ROLE_KEYS)
        got = "has no 'role'" if role is None else f"has unknown role {_show(role)}"
        raise _Invalid(f"{where} {got} (expected one of {expected})")
    where = f"{where} ({role})"
    if "weight" in message and role != "assistant":
        raise _Invalid(f"{where} has 'weight', which is only allowed on assistant messages")
    _check_known_keys(message, ROLE_KEYS[role], f"{where} ")
    for key in ("name", "tool_call_id", "refusal"):
        if key in message and (not isinstance(message[key], str) or not message[key]):
            raise _Invalid(f"{where} '{key}' must be a non-empty string, got {_kind(message[key])}")
    if role == "tool" and "tool_call_id" not in message:
        raise _Invalid(f"{where} has no 'tool_call_id' (the id of the assistant tool call it answers)")
    if role == "function" and "name" not in message:
        raise _Invalid(f"{where} has no 'name' (the function whose result it holds)")
    if role == "assistant":
        _check_assistant(message, where)
    else:
        _check_content(message.get("content"), role, where)


def _check_assistant(message: dict, where: str) -> None:
    weight = message.get("weight", 1)
    if isinstance(weight, bool) or weight not in (0, 1):
        raise _Invalid(f"{where} has weight {_show(weight)}; weight must be 0 or 1")
    for index, call in enumerate(_list_of(message, "tool_calls", where), start=1):
        _check_tool_call(call, f"{where} tool_calls[{index}]")
    if "function_call" in message:
        _check_function(message["function_call"], f"{where} function_call", needs_arguments=True)
    if "tool_calls" in message or "function_call" in message:
        if message.get("content") in (None, ""):  # the API itself returns null or "" beside a call
            return
    elif message.get("content") is None:
        raise _Invalid(f"{where} has no content; content may be missing only with tool_calls or function_call")
    _check_content(message["content"], "assistant", where)


def _check_content(content: object, role: str, where: str) -> None:
    if isinstance(content, str):
        if not content:
            raise _Invalid(f"{where} has empty content")
        return
    if not isinstance(content, list) or not content:
        allowed = " or ".join(PART_TYPES[role])
        raise _Invalid(f"{where} content must be a non-empty string or a list of {allowed} parts, got {_kind(content)}")
    for index, part in enumerate(content, start=1):
        _check_part(part, role, f"{where} content part {index}")


def _check_part(part: object, role: str, where: str) -> None:
    allowed = " or ".join(repr(t) for t in PART_TYPES[role])
    if not isinstance(part, dict):
        raise _Invalid(f"{where} must be an object with type {allowed}, got {_kind(part)}")
    kind = part.get("type")
    if isinstance(kind, str) and kind in IMAGE_PARTS:
        raise _Invalid(f"{where} is an image; images are not supported (the base models are text-only)")
    if not isinstance(kind, str) or kind not in PART_TYPES[role]:
        got = f"type {_show(kind)}" if "type" in part else "no 'type'"
        raise _Invalid(f"{where} has {got}; {role} content parts must have type {allowed}")
    text = part.get(PART_TEXT_KEY[kind])
    if not isinstance(text, str) or not text:
        raise _Invalid(f"{where} needs a non-empty string '{PART_TEXT_KEY[kind]}'")


def _check_tool_call(call: object, where: str) -> None:
    if not isinstance(call, dict):
        raise _Invalid(f"{where} must be a JSON object, got {_kind(call)}")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise _Invalid(f"{where} needs a non-empty string 'id'")
    if call.get("type") != "function":
        raise _Invalid(f"{where} must have type 'function', got {_show(call.get('type'))}")
    _check_function(call.get("function"), f"{where}.function", needs_arguments=True)


def _check_definitions(value: object, key: str, *, wrapped: bool) -> None:
    """``tools`` hold ``{"type": "function", "function": {...}}``; the deprecated ``functions`` hold the inner part."""
    if value is None:
        return
    fewest = 0 if wrapped else 1  # an empty tools list is common in exported data; functions had minItems 1
    if not isinstance(value, list) or not fewest <= len(value) <= 128:
        raise _Invalid(f"'{key}' must be a list of {fewest} to 128 definitions, got {_kind(value)}")
    for index, item in enumerate(value, start=1):
        where = f"{key}[{index}]"
        if wrapped:
            if not isinstance(item, dict) or item.get("type") != "function":
                raise _Invalid(f"{where} must be an object with type 'function'")
            item, where = item.get("function"), f"{where}.function"
        _check_function(item, where, needs_arguments=False)
        if "parameters" in item and not isinstance(item["parameters"], dict):
            raise _Invalid(f"{where}.parameters must be a JSON Schema object, got {_kind(item['parameters'])}")


def _check_function(value: object, where: str, *, needs_arguments: bool) -> None:
    if not isinstance(value, dict):
        raise _Invalid(f"{where} must be a JSON object, got {_kind(value)}")
    if not isinstance(value.get("name"), str) or not value["name"]:
        raise _Invalid(f"{where} needs a non-empty string 'name'")
    if needs_arguments and not isinstance(value.get("arguments"), str):
        got = _kind(value.get("arguments"))
        raise _Invalid(f"{where}.arguments must be a string holding JSON (as the API returns it), got {got}")


def _list_of(message: dict, key: str, where: str) -> list:
    if key not in message:
        return []
    if not isinstance(message[key], list) or not message[key]:
        raise _Invalid(f"{where} '{key}' must be a non-empty list, got {_kind(message[key])}")
    return message[key]


def _check_known_keys(obj: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise _Invalid(f"{where}has unknown key {key!r} (expected {', '.join(allowed)})")


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value)


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    if isinstance(value, (list, str)) and not value:
        return "an empty " + ("list" if isinstance(value, list) else "string")
    return names.get(type(value), type(value).__name__)
