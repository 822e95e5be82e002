"""The graders of reinforcement fine-tuning: plain functions that score one model
sample against one dataset row.

- ``validate_grader(grader) -> grader``: InvalidRequest naming the first bad field (``openft.graders.validate``).
- ``run_grader(grader, sample, item) -> dict``: OpenAI's grader run response (``openft.graders.run``).
- ``make_sample(output_text, tool_calls=None)``: the ``sample`` namespace for a model output.

string_check and text_similarity live in ``similarity``, python in ``sandbox`` (+ ``sandbox_runner``, the
confined process), score_model and label_model in ``model``, multi in ``run`` with its formula in ``formula``,
templates in ``templates``. Importing this package imports no scoring library and never torch: each metric loads
what it needs when first used. The API grades in a child process (``python -m openft.graders``, see ``worker``).
"""

from openft.graders.model import Endpoint
from openft.graders.run import run_grader
from openft.graders.templates import make_sample
from openft.graders.validate import validate_grader

__all__ = ["Endpoint", "make_sample", "run_grader", "validate_grader"]
