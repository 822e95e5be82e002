"""Per-step metrics to W&B for jobs with the ``wandb`` integration (``spec["wandb"]``, see ``openft.integrations``).

Every attempt of a job opens the same run (its id derives from the job id, ``resume="allow"``), so a paused and
resumed or crash-resumed job is one continuous run. Each step is logged once: the last step logged is kept in the
job directory, and an attempt that resumes from an earlier checkpoint does not log the steps it repeats (exact
resume makes their figures the same anyway). Credentials and mode come from the spec, which the server fills from
its own settings. Reporting is best effort: any W&B failure becomes a warning event and the job trains on.
"""

from __future__ import annotations

import os
from pathlib import Path

from openft import jobdir
from openft.train import reporting

STATE = "wandb.json"


class WandbReport:
    def __init__(self, job_dir: Path, spec: dict):
        self.job_dir, self.run = job_dir, None
        self.last_step = (jobdir.read_json(job_dir / STATE) or {}).get("last_step", 0)
        self._guard("start", lambda: self._start(spec))

    def _start(self, spec: dict) -> None:
        config = spec["wandb"]
        for key, env in (("api_key", "WANDB_API_KEY"), ("mode", "WANDB_MODE"), ("base_url", "WANDB_BASE_URL")):
            os.environ.pop(env, None)  # the server's settings decide, not whatever the environment holds
            if config.get(key):
                os.environ[env] = config[key]
        os.environ["WANDB_SILENT"] = "true"
        import wandb

        hp = spec["hyperparameters"]
        self.run = wandb.init(
            project=config["project"], name=config["name"], entity=config.get("entity"), tags=config.get("tags"),
            id=config["run_id"], resume="allow", dir=str(self.job_dir),
            config={"job_id": spec["job_id"], "method": spec["method"], "base_model": spec["base_model"],
                    "seed": spec["seed"], **hp},
        )

    def log(self, metrics: dict) -> None:
        step = metrics["step"]
        if self.run is None or step <= self.last_step:
            return
        figures = {k: v for k, v in metrics.items() if k not in ("step", "total_steps")}
        if self._guard("log", lambda: self.run.log(figures, step=step)):
            self.last_step = step
            jobdir.write_json_atomic(self.job_dir / STATE, {"last_step": step})

    def finish(self) -> None:
        if self.run is not None:
            self._guard("finish", self.run.finish)
            self.run = None

    def _guard(self, what: str, call) -> bool:
        """Run a W&B call; on failure say so in an event and stop reporting (the job itself carries on)."""
        try:
            call()
            return True
        except Exception as exc:  # noqa: BLE001 - W&B failing must never fail the job
            reporting.message(self.job_dir, f"W&B reporting stopped: could not {what} the run: "
                                            f"{type(exc).__name__}: {exc}", level="warn")
            self.run = None
            return False


def open_report(job_dir: Path) -> WandbReport | None:
    spec = jobdir.read_json(job_dir / jobdir.SPEC) or {}
    return WandbReport(job_dir, spec) if spec.get("wandb") else None
