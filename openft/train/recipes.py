"""The table from a job's ``method`` to the recipe that trains it (imported lazily by ``__main__``: it pulls in
torch, transformers and TRL)."""

from openft.train import dpo, rft, sft

RECIPES = {"supervised": sft.run, "dpo": dpo.run, "reinforcement": rft.run}
