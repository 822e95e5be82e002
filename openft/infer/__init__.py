"""Sampling from base and fine-tuned models: the torch side of ``chat/completions``.

The API process must never import torch, so the model runs in a long-lived worker process
(``python -m openft.infer``, see ``worker``) that the API drives through ``client.InferenceClient`` over
newline-delimited JSON on stdin/stdout. ``request`` (request checks, tool-call parsing) and ``client`` need only the
standard library; ``engine`` and ``worker`` import torch. This package's ``__init__`` imports nothing.
"""
