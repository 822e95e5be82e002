"""The chat format shared by training and inference: OpenAI messages and tools rendered through a model's chat
template, and ``<tool_call>`` blocks read back out of generated text. Standard library only, so that the trainer,
the inference worker and the API process can all import it, and neither ``openft.train`` nor ``openft.infer``
needs the other.

Rendering. When the template renders ``tools`` and ``tool_calls`` itself (checked once per template with a probe),
messages go to it natively, with ``arguments`` parsed into objects as Hugging Face templates expect. Otherwise
(SmolLM2's plain ChatML template, for one) they are rendered as text in the widely used Hermes style: tool
definitions go into the system turn inside ``<tools>…</tools>``, each call is appended to the assistant text as
``<tool_call>{"name": …, "arguments": {…}}</tool_call>``, and a tool result is a ``tool`` turn whose content is
wrapped in ``<tool_response>…</tool_response>``. ``developer`` turns become ``system`` turns, and the legacy
``functions``/``function_call``/``function`` forms map onto tools the same way. ``parallel_tool_calls`` does not
change the rendering. A model is therefore asked at inference exactly what it was trained on.

Parsing. Generated text is read back in the same Hermes format (``parse_tool_calls``).
"""

from __future__ import annotations

import json
import re
import secrets

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)

TOOLS_PREAMBLE = (
    "You can call the functions described below. To call one, reply with a JSON object inside "
    '<tool_call></tool_call> tags: <tool_call>{"name": <function name>, "arguments": <arguments object>}'
    "</tool_call>. Function results come back inside <tool_response></tool_response> tags.\n<tools>\n"
)


def to_template_messages(row: dict, native_tools: bool) -> tuple[list[dict], list[dict] | None]:
    """OpenAI-format messages (and tools) as chat-template input; see the module docstring for the rendering."""
    tools = list(row.get("tools") or [])
    tools += [{"type": "function", "function": f} for f in row.get("functions") or []]
    messages = [_template_message(m, native_tools) for m in row["messages"]]
    if not tools or native_tools:
        return messages, (tools or None)
    definitions = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    tools_text = TOOLS_PREAMBLE + definitions + "\n</tools>"
    if messages[0]["role"] == "system":
        messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + tools_text}
    else:
        messages.insert(0, {"role": "system", "content": tools_text})
    return messages, None


def _template_message(message: dict, native_tools: bool) -> dict:
    role = {"developer": "system", "function": "tool"}.get(message["role"], message["role"])
    content = _text(message.get("content"))
    if role == "assistant" and not content and message.get("refusal"):
        content = message["refusal"]
    calls = list(message.get("tool_calls") or [])
    if message.get("function_call"):
        calls.append({"type": "function", "function": message["function_call"]})
    if native_tools:
        out = {"role": role, "content": content}
        if calls:
            out["tool_calls"] = [_native_call(call) for call in calls]
        if message.get("tool_call_id"):
            out["tool_call_id"] = message["tool_call_id"]
        if role == "tool" and message.get("name"):
            out["name"] = message["name"]
        return out
    if calls:
        rendered = "\n".join(_hermes_call(call) for call in calls)
        content = f"{content}\n{rendered}" if content else rendered
    if role == "tool":
        content = f"<tool_response>\n{content}\n</tool_response>"
    return {"role": role, "content": content}


def _text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    # A list of content parts: the text (and refusal) parts, in order.
    return "".join(part.get("text") or part.get("refusal") or "" for part in content)


def _arguments(arguments):
    """``arguments`` arrives as a JSON string; templates and the Hermes text want the object (kept if unparsable)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def _native_call(call: dict) -> dict:
    function = call["function"]
    out = {"type": "function", "function": {"name": function["name"], "arguments": _arguments(function["arguments"])}}
    if call.get("id"):
        out["id"] = call["id"]
    return out


def _hermes_call(call: dict) -> str:
    function = call["function"]
    body = {"name": function["name"], "arguments": _arguments(function["arguments"])}
    return "<tool_call>\n" + json.dumps(body, ensure_ascii=False) + "\n</tool_call>"


def template_renders_tools(tokenizer) -> bool:
    """Whether the chat template renders both tool definitions and assistant tool calls (probed by rendering)."""
    return _template_fact(tokenizer, "renders_tools", _probe_tools)


def generation_header(tokenizer) -> str:
    """What ``add_generation_prompt`` appends (``"<|im_start|>assistant\\n"`` in ChatML): the role header that
    opens every assistant turn, which is prompt, not target."""
    return _template_fact(tokenizer, "header", _probe_header)


_TEMPLATE_FACTS: dict[tuple[str, str | None], object] = {}


def _template_fact(tokenizer, name: str, probe):
    """A fact about the tokenizer's chat template, probed once per template (rows share one tokenizer)."""
    key = (name, tokenizer.chat_template)
    if key not in _TEMPLATE_FACTS:
        _TEMPLATE_FACTS[key] = probe(tokenizer)
    return _TEMPLATE_FACTS[key]


def _probe_header(tokenizer) -> str:
    conversation = [{"role": "user", "content": "x"}]
    without = tokenizer.apply_chat_template(conversation, tokenize=False)
    with_prompt = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return with_prompt[len(without) :] if with_prompt.startswith(without) else ""


def _probe_tools(tokenizer) -> bool:
    tool = {"type": "function", "function": {"name": "probe_tool_zx", "description": "d", "parameters": {}}}
    call = {"type": "function", "function": {"name": "probe_call_zx", "arguments": {"a": 1}}}
    probe = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "1"},
    ]
    try:
        rendered = tokenizer.apply_chat_template(probe, tools=[tool], tokenize=False)
    except Exception:  # a template that chokes on tools is one that cannot render them
        return False
    return "probe_tool_zx" in rendered and "probe_call_zx" in rendered


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """Split generated ``text`` into the message ``content`` and OpenAI ``tool_calls``.

    Every ``<tool_call>…</tool_call>`` block that holds a JSON object with a string ``name`` becomes a call (its
    ``arguments``, or ``parameters`` as some models write, re-serialised as a JSON string). With at least one call,
    the content is the text before the first call, without trailing whitespace, or None if that is empty; text after
    the calls is dropped. A block that does not parse stays in the content, so nothing is silently lost.
    """
    calls, first = [], None
    for match in _TOOL_CALL.finditer(text):
        call = _tool_call(match.group(1))
        if call is not None:
            calls.append(call)
            first = match.start() if first is None else first
    if not calls:
        return text, []
    return (text[:first].rstrip() or None), calls


def _tool_call(body: str) -> dict | None:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"id": "call_" + secrets.token_hex(12), "type": "function",
            "function": {"name": obj["name"], "arguments": arguments}}
