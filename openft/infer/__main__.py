"""``python -m openft.infer``: the inference worker (see ``openft.infer.worker`` for the protocol).

Started by the API process through ``openft.infer.client.InferenceClient``; it exits at the end of its input.
"""

from __future__ import annotations

import os
import sys

# Before any Hugging Face import: nothing here may reach for a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# Before torch starts OpenMP: idle OpenMP threads sleep instead of spinning, which on a small machine shared with
# the API and a trainer is much faster (see openft/train/__main__.py). An operator's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from openft.infer.worker import main  # noqa: E402  (the environment above must be set first)

if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)  # skips seconds of library teardown; every reply has been flushed
