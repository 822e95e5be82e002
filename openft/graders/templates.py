"""Grader templates: ``{{item.path}}`` and ``{{sample.path}}`` filled from a dataset row and a sample.

A path is names and list indexes: ``{{item.answer}}``, ``{{sample.output_json.city}}``,
``{{sample.output_tools[0].function.name}}``; whitespace inside the braces is allowed. Strings are inserted as
they are, anything else as JSON. Text outside ``{{…}}`` is left alone, and so is a ``{{`` that opens no valid
reference. A reference to nothing is an error, never an empty string: a grader that silently compared against ""
would hand out wrong rewards.
"""

from __future__ import annotations

import json
import re

from openft.graders.outcome import GradeError
from openft.limits import MAX_SAMPLE_JSON_DEPTH, too_deep

NAMESPACES = ("item", "sample")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices", "output_audio")
_STEP = r"(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])"
REFERENCE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*" + _STEP + r"*)\s*\}\}")
_STEPS = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def references(template: str) -> list[str]:
    """The paths a template refers to.

    >>> references("Is {{ sample.output_text }} about {{item.topic}}?")
    ['sample.output_text', 'item.topic']
    """
    return REFERENCE.findall(template)


def check_reference(path: str) -> str | None:
    """Why a reference can never resolve (an unknown namespace or sample field), or None if it may.

    >>> check_reference("sample.output_text") is None
    True
    >>> check_reference("answer.text")
    "unknown namespace 'answer' (use item or sample)"
    """
    head, steps = _split(path)
    if head not in NAMESPACES:
        return f"unknown namespace {head!r} (use item or sample)"
    if head == "sample" and steps and steps[0][0] not in SAMPLE_FIELDS:
        return "sample has only " + ", ".join(SAMPLE_FIELDS)
    return None


def _split(path: str) -> tuple[str, list[tuple[str, str]]]:
    head = re.match(r"[A-Za-z_][A-Za-z0-9_]*", path).group()
    return head, _STEPS.findall(path[len(head):])


def lookup(path: str, sample: dict, item: dict):
    """The value a reference names.

    >>> lookup("sample.output_tools[0].function.name", {"output_tools": [{"function": {"name": "f"}}]}, {})
    'f'
    >>> lookup("item.scores[1]", {}, {"scores": [3, 4]})
    4
    """
    head, steps = _split(path)
    if head not in NAMESPACES:
        raise GradeError("invalid_variable_error", f"{{{{{path}}}}}: {check_reference(path)}")
    if head == "sample" and steps[:1] == [("output_json", "")] and sample.get("output_json") is None:
        raise GradeError("sample_parse_error", f"{{{{{path}}}}} needs a sample that is valid JSON")
    value = item if head == "item" else sample
    for name, index in steps:
        try:
            value = value[int(index)] if index else value[name]
        except (KeyError, IndexError, TypeError):
            raise GradeError("invalid_variable_error", f"{{{{{path}}}}} does not exist in the {head}") from None
    return value


def render(template: str, sample: dict, item: dict) -> str:
    """The template with each reference replaced by its value (strings as they are, the rest as JSON).

    >>> render("{{item.name}} scored {{ item.score }}; tags {{item.tags}}", {}, {"name": "Ann", "score": 3,
    ...                                                                        "tags": ["a"]})
    'Ann scored 3; tags ["a"]'
    >>> render("{{ item.missing }}", {}, {})
    Traceback (most recent call last):
    ...
    openft.graders.outcome.GradeError: {{item.missing}} does not exist in the item
    """
    def fill(match: re.Match) -> str:
        value = lookup(match.group(1), sample, item)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return REFERENCE.sub(fill, template)


def make_sample(output_text: str, tool_calls: list | None = None, output_json=None) -> dict:
    """The ``sample`` namespace for one model output. ``output_json`` is parsed from the text when it is JSON.

    >>> make_sample('{"a": 1}')["output_json"]
    {'a': 1}
    >>> make_sample("plain")["output_json"] is None, make_sample("[" * 990 + "]" * 990)["output_json"] is None
    (True, True)
    """
    if output_json is None and not too_deep(output_text.encode(), MAX_SAMPLE_JSON_DEPTH):
        try:
            output_json = json.loads(output_text)
        except ValueError:
            output_json = None
    message = {"role": "assistant", "content": output_text, "tool_calls": tool_calls or None}
    return {"output_text": output_text, "output_json": output_json, "output_tools": tool_calls or [],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "output_audio": None}
