"""What grading one sample produces: a reward, OpenAI's error flags, and the run response built from them.

A grader that cannot score a sample does not raise to its caller: it scores 0 and raises one flag in
``metadata.errors``. Inside the graders that is a ``GradeError(flag, details)``, caught once by
``openft.graders.run``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FLAGS = ("formula_parse_error", "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error",
         "invalid_variable_error", "other_error", "python_grader_server_error", "python_grader_runtime_error",
         "model_grader_server_error", "model_grader_refusal_error", "model_grader_parse_error")
# The flags that carry a text beside them, and the name of that text.
DETAILS = {"python_grader_server_error": "python_grader_server_error_type",
           "python_grader_runtime_error": "python_grader_runtime_error_details",
           "model_grader_server_error": "model_grader_server_error_details"}


class GradeError(Exception):
    """A sample that could not be scored: ``flag`` is one of FLAGS; ``details`` says why."""

    def __init__(self, flag: str, details: str):
        assert flag in FLAGS, flag
        super().__init__(details)
        self.flag, self.details = flag, details


@dataclass
class Outcome:
    reward: float = 0.0
    errors: dict = field(default_factory=dict)  # flag -> details, only the flags raised
    scores: dict = field(default_factory=dict)
    sub_rewards: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)  # model -> {prompt_tokens, completion_tokens, total_tokens}
    sampled_model_name: str | None = None

    def add_usage(self, model: str, usage: dict) -> None:
        mine = self.usage.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
        for key in mine:
            mine[key] += int(usage.get(key) or 0)


def errors_object(raised: dict) -> dict:
    """``metadata.errors``: every flag false except those raised, with their texts.

    >>> e = errors_object({"python_grader_runtime_error": "ZeroDivisionError: division by zero"})
    >>> e["python_grader_runtime_error"], e["python_grader_runtime_error_details"], e["other_error"]
    (True, 'ZeroDivisionError: division by zero', False)
    """
    errors: dict = {flag: flag in raised for flag in FLAGS}
    for flag, text in DETAILS.items():
        errors[text] = raised.get(flag)
    return errors


def response(grader: dict, outcome: Outcome, seconds: float) -> dict:
    """OpenAI's grader run response."""
    total = sum(u["total_tokens"] for u in outcome.usage.values())
    return {
        "reward": outcome.reward,
        "metadata": {
            "name": grader.get("name", ""),
            "type": grader["type"],
            "errors": errors_object(outcome.errors),
            "execution_time": seconds,
            "scores": outcome.scores,
            "token_usage": total if outcome.usage else None,
            "sampled_model_name": outcome.sampled_model_name,
        },
        "sub_rewards": outcome.sub_rewards,
        "model_grader_token_usage_per_model": outcome.usage,
    }
