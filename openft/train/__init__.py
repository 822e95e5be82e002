"""The training side of openft: ``python -m openft.train JOB_DIR`` runs one attempt of one job.

It talks to the service only through the job directory (``openft.jobdir``) and imports nothing else of openft:
no web stack, no SQL. Recipes (one module per method, e.g. ``sft``) do the training; ``reporting`` writes what the
service reads; ``data`` turns OpenAI-format rows into tokens and labels.
"""


class JobError(Exception):
    """A failure with a clear cause, reported as the job's ``error`` (its ``code`` as OpenAI names it)."""

    def __init__(self, message: str, code: str = "server_error"):
        super().__init__(message)
        self.code = code
