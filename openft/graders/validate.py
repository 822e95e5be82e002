"""Checking a grader object before anything runs it.

The first problem found is an ``InvalidRequest`` whose ``param`` names the field, e.g. ``grader.evaluation_metric``
or ``grader.graders.fuzzy.input``. Pure Python and cheap: the API runs it in its own process. Unknown fields are
refused too, so that a misspelt ``evaluation_metrics`` is an error rather than a silent default.
"""

from __future__ import annotations

import ast
import copy
import math
import re

from openft.errors import InvalidRequest
from openft.graders import formula
from openft.graders.templates import check_reference, references

TOP_LEVEL = ("string_check", "text_similarity", "python", "score_model", "multi")
OPERATIONS = ("eq", "ne", "like", "ilike")
METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "cosine", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5",
           "rouge_l")
ROLES = ("user", "assistant", "system", "developer")
MAX_SOURCE_BYTES = 256 * 1024
# type -> (required fields, optional fields), besides "type" and "name"
FIELDS = {
    "string_check": ({"input", "reference", "operation"}, set()),
    "text_similarity": ({"input", "reference", "evaluation_metric"}, {"pass_threshold"}),
    "python": ({"source"}, {"image_tag", "pass_threshold"}),
    "score_model": ({"model", "input"}, {"range", "sampling_params", "pass_threshold"}),
    "label_model": ({"model", "input", "labels", "passing_labels"}, set()),
    "multi": ({"graders", "calculate_output"}, set()),
}
SAMPLING_PARAMS = {"seed": int, "top_p": float, "temperature": float, "max_completions_tokens": int,
                   "reasoning_effort": str}
GRADER_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def validate_grader(grader, param: str = "grader", *, inside_multi: bool = False) -> dict:
    """The grader, checked and copied; InvalidRequest naming the first bad field otherwise.

    >>> validate_grader({"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
    ...                  "reference": "{{item.answer}}", "operation": "eq"})["operation"]
    'eq'
    >>> validate_grader({"type": "string_check", "name": "exact", "input": "a", "reference": "b", "operation": "neq"})
    Traceback (most recent call last):
    ...
    openft.errors.InvalidRequest: grader.operation must be one of eq, ne, like, ilike.
    """
    if not isinstance(grader, dict):
        raise InvalidRequest(f"{param} must be an object.", param=param)
    kind = grader.get("type")
    allowed = [t for t in FIELDS if t != "multi"] if inside_multi else TOP_LEVEL
    if kind not in allowed:
        if kind == "label_model":
            raise InvalidRequest("label_model graders are allowed only inside a multi grader.", param=f"{param}.type")
        if kind == "multi":
            raise InvalidRequest("A multi grader cannot contain another multi grader.", param=f"{param}.type")
        raise InvalidRequest(f"{param}.type must be one of {', '.join(allowed)}.", param=f"{param}.type")
    required, optional = FIELDS[kind]
    for key in grader:
        if key not in required | optional | {"type", "name"}:
            raise InvalidRequest(f"Unrecognized field {param}.{key} for a {kind} grader.", param=f"{param}.{key}")
    for key in sorted(required | {"name"}):
        if key not in grader:
            raise InvalidRequest(f"{param}.{key} is required for a {kind} grader.", param=f"{param}.{key}")
    _string(grader, "name", param)
    CHECKS[kind](grader, param)
    return copy.deepcopy(grader)


def _fail(param: str, message: str):
    raise InvalidRequest(f"{param} {message}.", param=param)


def _string(grader: dict, key: str, param: str, *, non_empty: bool = False) -> str:
    value = grader.get(key)
    if not isinstance(value, str) or (non_empty and not value.strip()):
        _fail(f"{param}.{key}", "must be a non-empty string" if non_empty else "must be a string")
    return value


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _template(value, param: str) -> None:
    if not isinstance(value, str):
        _fail(param, "must be a string")
    for path in references(value):
        problem = check_reference(path)
        if problem:
            _fail(param, f"refers to {{{{{path}}}}}: {problem}")


def _choice(grader: dict, key: str, choices, param: str) -> None:
    if grader.get(key) not in choices:
        _fail(f"{param}.{key}", f"must be one of {', '.join(choices)}")


def _threshold(grader: dict, param: str) -> None:
    if "pass_threshold" in grader and not _number(grader["pass_threshold"]):
        _fail(f"{param}.pass_threshold", "must be a number")


def _string_check(grader: dict, param: str) -> None:
    _template(grader["input"], f"{param}.input")
    _template(grader["reference"], f"{param}.reference")
    _choice(grader, "operation", OPERATIONS, param)


def _text_similarity(grader: dict, param: str) -> None:
    _template(grader["input"], f"{param}.input")
    _template(grader["reference"], f"{param}.reference")
    _choice(grader, "evaluation_metric", METRICS, param)
    _threshold(grader, param)


def _python(grader: dict, param: str) -> None:
    source = _string(grader, "source", param)
    if len(source.encode()) > MAX_SOURCE_BYTES:
        _fail(f"{param}.source", f"is {len(source.encode())} bytes; the limit is {MAX_SOURCE_BYTES} (256 kB)")
    try:
        tree = ast.parse(source)  # parse only: nothing of the source runs in this process
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        line = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        _fail(f"{param}.source", f"is not valid Python{line}: {getattr(exc, 'msg', None) or exc}")
    if "grade" not in _top_level_names(tree):
        _fail(f"{param}.source", "must define grade(sample, item) at the top level")
    if "image_tag" in grader and grader["image_tag"] is not None:
        _string(grader, "image_tag", param)
    _threshold(grader, param)


def _top_level_names(tree: ast.Module) -> set[str]:
    bound = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return bound


def _messages(grader: dict, param: str) -> None:
    messages = grader["input"]
    if not isinstance(messages, list) or not messages:
        _fail(f"{param}.input", "must be a non-empty list of messages")
    for i, message in enumerate(messages):
        where = f"{param}.input[{i}]"
        if not isinstance(message, dict):
            _fail(where, "must be an object with role and content")
        for key in message:
            if key not in ("role", "content", "type"):
                _fail(f"{where}.{key}", "is not a field of a message (use role, content, type)")
        if message.get("type", "message") != "message":
            _fail(f"{where}.type", "must be message")
        _choice(message, "role", ROLES, where)
        if "content" not in message:
            _fail(f"{where}.content", "is required")
        content = message["content"]
        for j, part in enumerate(content if isinstance(content, list) else [content]):
            _content_part(part, f"{where}.content[{j}]" if isinstance(content, list) else f"{where}.content")


def _content_part(part, param: str) -> None:
    if isinstance(part, str):
        return _template(part, param)
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text"):
        return _template(part.get("text"), f"{param}.text")
    if kind == "input_image":
        return _template(part.get("image_url"), f"{param}.image_url")
    if kind == "input_audio":
        audio = part.get("input_audio")
        audio = audio if isinstance(audio, dict) else {}
        if not isinstance(audio.get("data"), str) or audio.get("format") not in ("mp3", "wav"):
            _fail(f"{param}.input_audio", "must be {data: base64 string, format: mp3|wav}")
        return None
    _fail(param, "must be a string or a content part of type input_text, output_text, input_image or input_audio")


def _model(grader: dict, param: str) -> None:
    _string(grader, "model", param, non_empty=True)
    _messages(grader, param)


def _score_model(grader: dict, param: str) -> None:
    _model(grader, param)
    bounds = grader.get("range")
    if bounds is not None and not (isinstance(bounds, list) and len(bounds) == 2 and all(map(_number, bounds))
                                   and bounds[0] < bounds[1]):
        _fail(f"{param}.range", "must be two numbers [min, max] with min < max")
    params = grader.get("sampling_params")
    if params is not None and not isinstance(params, dict):
        _fail(f"{param}.sampling_params", "must be an object")
    for key, value in (params or {}).items():
        want = SAMPLING_PARAMS.get(key)
        if want is None:
            _fail(f"{param}.sampling_params.{key}", f"is not a sampling parameter ({', '.join(SAMPLING_PARAMS)})")
        if want is str and not (value is None or isinstance(value, str)):
            _fail(f"{param}.sampling_params.{key}", "must be a string")
        if want is not str and not (value is None or _number(value) and (want is float or float(value).is_integer())):
            _fail(f"{param}.sampling_params.{key}", "must be an integer" if want is int else "must be a number")
    _threshold(grader, param)


def _label_model(grader: dict, param: str) -> None:
    _model(grader, param)
    labels, passing = grader["labels"], grader["passing_labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        _fail(f"{param}.labels", "must be a non-empty list of non-empty strings")
    if len(set(labels)) != len(labels):
        _fail(f"{param}.labels", "must not repeat a label")
    if not isinstance(passing, list) or not passing or any(x not in labels for x in passing):
        _fail(f"{param}.passing_labels", "must be a non-empty list of labels taken from labels")


def _multi(grader: dict, param: str) -> None:
    graders = grader["graders"]
    if not isinstance(graders, dict) or not graders:
        _fail(f"{param}.graders", "must be a non-empty object mapping names to graders")
    for key, sub in graders.items():
        if not GRADER_KEY.fullmatch(key) or key in formula.FUNCTIONS:
            _fail(f"{param}.graders.{key}", "needs a name made of letters, digits and '_' (not a function name) "
                  "so that calculate_output can use it")
        validate_grader(sub, f"{param}.graders.{key}", inside_multi=True)
    try:
        used = formula.names(formula.parse(grader["calculate_output"]))
    except formula.FormulaError as exc:
        _fail(f"{param}.calculate_output", f"is not a valid formula: {exc}")
    unknown = sorted(used - set(graders))
    if unknown:
        _fail(f"{param}.calculate_output", f"uses {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} "
              "not among the graders")


CHECKS = {"string_check": _string_check, "text_similarity": _text_similarity, "python": _python,
          "score_model": _score_model, "label_model": _label_model, "multi": _multi}
