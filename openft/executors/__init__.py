"""Executors run training attempts: `local` (a subprocess each; the default) or `ray` (a Ray actor each, on any node
of a cluster). Each offers start/signal/poll/kill, and `host`: the host whose schedulers alone can observe its
attempts, or None when any replica can."""

from openft.config import Settings
from openft.executors.local import LocalExecutor


def make_executor(settings: Settings):
    if settings.executor == "local":
        return LocalExecutor(settings.trainer_python)
    from openft.executors.ray import RayExecutor  # imported only where used: Ray is an optional dependency

    return RayExecutor(settings.ray_address, settings.trainer_python, num_cpus=settings.ray_num_cpus,
                       num_gpus=settings.ray_num_gpus, memory=settings.ray_memory_bytes,
                       resources=settings.ray_resources, placement_timeout=settings.ray_placement_timeout)
