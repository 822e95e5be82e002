"""Running a grader on one sample: the dispatch from a grader's ``type`` to its function, and multi graders.

``run_grader`` returns OpenAI's run response and never raises for a sample that cannot be graded:
that sample scores 0 with an error flag. Only a grader that is itself invalid raises (InvalidRequest, from
``validate_grader``), since no sample could ever be graded by it.
"""

from __future__ import annotations

import time

from openft.graders import formula
from openft.graders.model import Endpoint, label_model, score_model
from openft.graders.outcome import GradeError, Outcome, response
from openft.graders.sandbox import run_python
from openft.graders.similarity import string_check, text_similarity
from openft.graders.templates import render
from openft.graders.validate import validate_grader


def run_grader(grader: dict, sample: dict, item: dict | None = None, *, endpoint: Endpoint | None = None) -> dict:
    """Grade ``sample`` (see ``templates.make_sample``) for the dataset row ``item``.

    >>> from openft.graders.templates import make_sample
    >>> out = run_grader({"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
    ...                   "reference": "{{item.answer}}", "operation": "eq"}, make_sample("Paris"), {"answer": "Paris"})
    >>> out["reward"], out["metadata"]["type"], out["metadata"]["errors"]["invalid_variable_error"]
    (1.0, 'string_check', False)
    >>> out = run_grader({"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
    ...                   "reference": "{{item.answer}}", "operation": "eq"}, make_sample("Paris"), {})
    >>> out["reward"], out["metadata"]["errors"]["invalid_variable_error"]
    (0.0, True)
    """
    grader = validate_grader(grader)
    started = time.perf_counter()
    outcome = grade(grader, sample, item or {}, endpoint or Endpoint())
    return response(grader, outcome, time.perf_counter() - started)


def grade(grader: dict, sample: dict, item: dict, endpoint: Endpoint) -> Outcome:
    """An Outcome for a valid grader: its reward, or 0 and the flag of what went wrong."""
    outcome = Outcome()
    try:
        if grader["type"] == "multi":
            outcome.reward = _multi(grader, sample, item, endpoint, outcome)
        else:
            outcome.reward = _single(grader, sample, item, endpoint, outcome)
    except GradeError as exc:
        outcome.reward, outcome.errors[exc.flag] = 0.0, exc.details
    except Exception as exc:  # noqa: BLE001 - a grading library's own failure is the sample's error, not a crash
        outcome.reward, outcome.errors["other_error"] = 0.0, f"{type(exc).__name__}: {exc}"
    return outcome


def _single(grader: dict, sample: dict, item: dict, endpoint: Endpoint, outcome: Outcome) -> float:
    kind = grader["type"]
    if kind == "string_check":
        return string_check(grader["operation"], render(grader["input"], sample, item),
                            render(grader["reference"], sample, item))
    if kind == "text_similarity":
        return text_similarity(grader["evaluation_metric"], render(grader["input"], sample, item),
                               render(grader["reference"], sample, item))
    if kind == "python":
        return run_python(grader["source"], sample, item)
    if kind == "score_model":
        return score_model(grader, sample, item, endpoint, outcome)
    return label_model(grader, sample, item, endpoint, outcome)


def _multi(grader: dict, sample: dict, item: dict, endpoint: Endpoint, outcome: Outcome) -> float:
    """Every sub-grader runs (each failure is kept as a flag); then calculate_output combines their rewards."""
    for key, sub in grader["graders"].items():
        part = grade(sub, sample, item, endpoint)
        outcome.sub_rewards[key] = part.reward
        for flag, details in part.errors.items():
            outcome.errors.setdefault(flag, f"{key}: {details}")
        for model, usage in part.usage.items():
            outcome.add_usage(model, usage)
        outcome.sampled_model_name = outcome.sampled_model_name or part.sampled_model_name
    outcome.scores = dict(outcome.sub_rewards)
    if outcome.errors:  # a formula over a reward that is only a stand-in 0 would be a wrong reward
        raise GradeError(next(iter(outcome.errors)), next(iter(outcome.errors.values())))
    try:
        return formula.evaluate(grader["calculate_output"], outcome.sub_rewards)
    except formula.FormulaError as exc:
        raise GradeError("formula_parse_error", str(exc)) from None
