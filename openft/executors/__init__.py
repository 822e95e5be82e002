"""Executors run training attempts: `local` (a subprocess each; the default). Each offers start/signal/poll/kill."""

from openft.executors.local import LocalExecutor

EXECUTORS = {"local": LocalExecutor}
