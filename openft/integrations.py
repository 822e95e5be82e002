"""What a job's ``integrations`` become in its training spec: today, W&B.

The request names only where to report (project, name, entity, tags); the credentials and mode come from the
server's settings alone (``wandb_api_key``, ``wandb_mode``, ``wandb_base_url``), never from the request. The run id
derives from the job id, so every attempt of a job (resume after a pause or a crash) continues the same run.
"""

from __future__ import annotations

from openft import tables as t
from openft.config import Settings


def wandb_spec(job: t.Job, settings: Settings) -> dict | None:
    requested = next((i["wandb"] for i in job.integrations or [] if i.get("type") == "wandb"), None)
    if requested is None:
        return None
    return {
        "project": requested["project"], "name": requested.get("name") or job.id, "entity": requested.get("entity"),
        "tags": requested.get("tags") or [], "run_id": job.id.removeprefix("ftjob_"),
        "api_key": settings.wandb_api_key, "mode": settings.wandb_mode, "base_url": settings.wandb_base_url,
    }
