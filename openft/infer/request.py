"""An OpenAI chat completions request checked and reduced to what sampling needs. Standard library only: the API process may check a request before it reaches the worker.

Supported request fields: ``messages`` (system, developer, user, assistant with ``tool_calls``, tool, and the
legacy function role; text content or text parts), ``tools`` (and legacy ``functions``), ``tool_choice``
("none" hides the tools from the model and turns off parsing; "auto" lets it choose; "required" and a named
function ``{"type": "function", "function": {"name": …}}`` are enforced by starting the assistant's turn with the
opening of a call, ``<tool_call>`` or ``<tool_call>{"name": "…", "arguments": ``, so the model can only write a
call (of that function); the legacy ``function_call`` maps the same way), ``temperature`` (0–2; 0 is greedy), ``top_p`` (0–1), ``max_completion_tokens`` or ``max_tokens`` (default:
what is left of the context), ``stop`` (a string or up to 4), ``seed`` (same seed, same request, same model: same
output), ``n`` (1–128) and ``stream``. Fields that would change the output but are not implemented (logprobs,
penalties, logit_bias, structured response formats) are refused with a clear error rather than ignored; all
other fields (``model``, ``user``, ``metadata``, ``stream_options`` …) are the caller's business.

Generated tool calls are read back by ``openft.chatformat.parse_tool_calls``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from openft.chatformat import TOOL_CALL_OPEN
from openft.errors import InvalidRequest

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
MAX_N = 128
MAX_STOP = 4

# Fields that change the output, with the values that mean "off" (the only values accepted).
_UNSUPPORTED = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "prediction": (None,),
    "audio": (None,),
}


@dataclass(frozen=True)
class ChatParams:
    """What sampling needs from a chat request. ``tools`` is None when the model should not see any."""

    messages: list[dict]
    tools: list[dict] | None
    temperature: float
    top_p: float
    max_tokens: int | None
    stop: tuple[str, ...]
    seed: int | None
    n: int
    stream: bool
    forced_call: str | None = None  # what the assistant's turn must start with (tool_choice "required" or a name)


def parse_chat_request(request: dict) -> ChatParams:
    """Check ``request`` (an OpenAI chat completions body); raise ``InvalidRequest`` naming the first problem."""
    if not isinstance(request, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    for field, allowed in _UNSUPPORTED.items():
        if request.get(field) not in allowed:
            raise InvalidRequest(f"'{field}' is not supported by this server.", param=field,
                                 code="unsupported_parameter")
    response_format = request.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise InvalidRequest("Only response_format {'type': 'text'} is supported by this server.",
                             param="response_format", code="unsupported_parameter")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        _check_message(message, f"messages[{i}]")
    tools = list(_array(request, "tools")) + [{"type": "function", "function": f} for f in _array(request, "functions")]
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest("Each tool must be {'type': 'function', 'function': {'name': ...}}.",
                                 param=f"tools[{i}]")
    choice = request.get("tool_choice", request.get("function_call"))
    forced = _forced_call(choice, tools, "tool_choice" if "tool_choice" in request else "function_call")
    if choice == "none":
        tools = []
    max_tokens = request.get("max_completion_tokens")
    max_param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, max_param = request.get("max_tokens"), "max_tokens"
    return ChatParams(
        messages=messages,
        tools=tools or None,
        temperature=_number(request, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(request, "top_p", 1.0, 0.0, 1.0),
        max_tokens=None if max_tokens is None else _integer(max_tokens, max_param, 1, None),
        stop=_stop(request.get("stop")),
        seed=None if request.get("seed") is None else _integer(request["seed"], "seed", -(2**63), 2**64 - 1),
        n=1 if request.get("n") is None else _integer(request["n"], "n", 1, MAX_N),
        stream=_boolean(request, "stream"),
        forced_call=forced,
    )


def _forced_call(choice, tools: list[dict], param: str) -> str | None:
    """The opening of the assistant's turn that enforces ``tool_choice`` (None: nothing to enforce)."""
    if choice is None or choice in ("auto", "none"):
        return None
    names = [tool["function"]["name"] for tool in tools]
    if choice == "required":
        if not tools:
            raise InvalidRequest("tool_choice 'required' needs at least one tool in 'tools'.", param=param)
        return TOOL_CALL_OPEN + "\n"
    name = choice.get("name") if isinstance(choice, dict) and param == "function_call" else (
        (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None)
    if not isinstance(name, str):
        raise InvalidRequest(f"'{param}' must be 'none', 'auto', 'required' or "
                             "{'type': 'function', 'function': {'name': ...}}.", param=param)
    if name not in names:
        raise InvalidRequest(f"'{param}' names the function {name!r}, which is not in 'tools'.", param=param)
    return TOOL_CALL_OPEN + "\n" + json.dumps({"name": name}, ensure_ascii=False)[:-1] + ', "arguments": '


def _check_message(message, where: str) -> None:
    if not isinstance(message, dict):
        raise InvalidRequest(f"'{where}' must be an object.", param=where)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:  # a dict or list is not hashable: check the type first
        raise InvalidRequest(f"'{where}.role' must be one of {sorted(ROLES)}, got {role!r}.", param=f"{where}.role")
    content = message.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                raise InvalidRequest("Only text content parts are supported by this server.",
                                     param=f"{where}.content[{j}]")
    elif content is not None and not isinstance(content, str):
        raise InvalidRequest(f"'{where}.content' must be a string, an array of text parts, or null.",
                             param=f"{where}.content")
    if content is None and role != "assistant":
        raise InvalidRequest(f"'{where}.content' is required for role '{role}'.", param=f"{where}.content")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest(f"'{where}.tool_calls' must be an array.", param=f"{where}.tool_calls")
    for k, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(function, dict) and isinstance(function.get("name"), str)
                and isinstance(function.get("arguments"), str)):
            raise InvalidRequest("A tool call needs function.name and function.arguments (a JSON string).",
                                 param=f"{where}.tool_calls[{k}]")


def _array(request: dict, name: str) -> list:
    value = request.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"'{name}' must be an array.", param=name)
    return value


def _number(request: dict, name: str, default: float, low: float, high: float) -> float:
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number from {low:g} to {high:g}, got {value!r}.", param=name,
                             code="invalid_value")
    return float(value)


def _integer(value, name: str, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidRequest(f"'{name}' must be an integer {bound}, got {value!r}.", param=name, code="invalid_value")
    return value


def _boolean(request: dict, name: str) -> bool:
    value = request.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean.", param=name)
    return bool(value)


def _stop(value) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if stops is None:
        return ()
    if (not isinstance(stops, list) or len(stops) > MAX_STOP
            or not all(isinstance(s, str) and s for s in stops)):
        raise InvalidRequest(f"'stop' must be a non-empty string or an array of up to {MAX_STOP} of them.",
                             param="stop")
    return tuple(stops)
