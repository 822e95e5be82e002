"""Sampling from base and fine-tuned models: the torch side of ``chat/completions``.

The API process must never import torch, so models run in long-lived worker processes (``python -m openft.infer``,
see ``worker``) that the API drives through ``client.InferenceClient`` over newline-delimited JSON on stdin/stdout.
``request`` (request checks) and ``client`` need only the standard library; ``engine`` (loaded models, admission),
``batch`` (continuous batching) and ``vllm_engine`` (the GPU path) import torch; ``text`` turns tokens into what a
client sees. The chat format they share with training is ``openft.chatformat``. This package's ``__init__`` imports
nothing.
"""
