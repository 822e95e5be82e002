"""What a model's own files say about it: context window and architecture (config.json), parameter count
(the tensor shapes in the safetensors headers), licence, languages and base model (the YAML front matter of a
Hugging Face README.md, or a LICENSE file). Standard library only: the API process reads these facts without
loading any weights. An unrecorded fact is None, never a guess.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# The first line of well-known licence texts, for a folder that ships a LICENSE file but no model card.
LICENSE_TEXTS = {"apache license": "apache-2.0", "mit license": "mit"}
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


@dataclass(frozen=True)
class ModelCard:
    context_window: int | None
    parameter_count: int | None
    mixture_of_experts: bool
    license: str | None
    languages: list[str] | None
    base_model: str | None


def read(folder: Path) -> ModelCard:
    """The facts of the Hugging Face folder ``folder``, cached until one of its files changes."""
    folder = Path(folder)
    try:
        stamp = max((f.stat().st_mtime_ns for f in folder.iterdir()), default=0)
    except OSError:
        stamp = 0
    return _read(str(folder), stamp)


@lru_cache(maxsize=256)
def _read(folder: str, _stamp: int) -> ModelCard:
    path = Path(folder)
    config = _json(path / "config.json") or {}
    front = _front_matter(path / "README.md")
    return ModelCard(
        context_window=_int(config.get("max_position_embeddings")),
        parameter_count=parameter_count(path),
        mixture_of_experts=any(_int(config.get(k)) for k in MOE_KEYS),
        license=_text(front.get("license")) or _license_file(path),
        languages=_list(front.get("language")),
        base_model=_text(front.get("base_model")),
    )


def parameter_count(folder: Path) -> int | None:
    """Elements of every tensor stored in the folder's ``*.safetensors`` files (read from their JSON headers)."""
    total, found = 0, False
    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with open(file, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
        except (OSError, ValueError, struct.error):
            return None
        for name, tensor in header.items():
            if name != "__metadata__":
                total += math.prod(tensor["shape"])
                found = True
    return total if found else None


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _front_matter(readme: Path) -> dict:
    """The simple ``key: value`` and ``key:\\n- item`` lines of a model card's YAML header (all that the facts
    above need; no YAML library is required for that)."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return {}
    match = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    if not match:
        return {}
    out: dict = {}
    key = None
    for line in match.group(1).splitlines():
        item = re.match(r"\s*-\s+(.+)", line)
        if item and key:
            out[key] = [*(out[key] if isinstance(out[key], list) else []), item.group(1).strip().strip("'\"")]
            continue
        pair = re.match(r"([A-Za-z_]+):\s*(.*)", line)
        if pair:
            key, value = pair.group(1), pair.group(2).strip().strip("'\"")
            out[key] = value or []
    return out


def _license_file(folder: Path) -> str | None:
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
        try:
            first = (folder / name).read_text(encoding="utf-8", errors="replace").strip().splitlines()[0].lower()
        except (OSError, IndexError):
            continue
        for words, spdx in LICENSE_TEXTS.items():
            if words in first:
                return spdx
    return None


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _text(value) -> str | None:
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else None
    return value if isinstance(value, str) and value else None


def _list(value) -> list[str] | None:
    if isinstance(value, str) and value:
        return [value]
    return value if isinstance(value, list) and value else None
